import AtelierCore
import Foundation

/// JSON Schemas derived from the Codable types themselves: a type is "decoded" by a decoder
/// that records which keys it asks for, with which types, and whether it asks with
/// `decodeIfPresent` (optional) or `decode` (required). So a field added to a request or
/// response type is in the document without anyone writing it twice. What the shape cannot say
/// (bounds, defaults, descriptions) a type adds through `SchemaDescribed`, from the same
/// constants its validation uses.
final class SchemaRegistry {
  private(set) var components: [String: JSONValue] = [:]
  private var inProgress: Set<String> = []
  /// What this manager's configuration decides about the schemas (the sizes it allows).
  let context: SchemaContext

  init(context: SchemaContext) { self.context = context }

  /// The schema of `type`: inline for scalars, arrays, maps and enums; a `$ref` to a component
  /// for objects.
  func schema(for type: any Decodable.Type) -> JSONValue {
    if let scalar = Self.scalarSchema(type) { return scalar }
    if let optional = type as? any SchemaOptional.Type {
      return schema(for: optional.schemaWrapped)
    }
    if let array = type as? any SchemaArray.Type {
      return ["type": "array", "items": schema(for: array.schemaElement)]
    }
    if let map = type as? any SchemaDictionary.Type {
      return ["type": "object", "additionalProperties": schema(for: map.schemaValue)]
    }
    if let enumeration = type as? any SchemaEnumeration.Type {
      return ["type": "string", "enum": .array(enumeration.schemaCases.map { .string($0) })]
    }
    let name = Self.name(of: type)
    if components[name] == nil && !inProgress.contains(name) {
      inProgress.insert(name)
      components[name] = objectSchema(for: type).json
      inProgress.remove(name)
    }
    return OpenAPIDocument.ref(name)
  }

  /// The component name of an object type: its own, or its qualified name without the
  /// module (`SystemStats.Host` → `SystemStatsHost`), so nested types of the same name differ.
  static func name(of type: any Decodable.Type) -> String {
    if let described = type as? any SchemaDescribed.Type { return described.schemaName }
    return String(reflecting: type).split(separator: ".").dropFirst().joined()
  }

  static func scalarSchema(_ type: any Decodable.Type) -> JSONValue? {
    switch type {
    case is String.Type: ["type": "string"]
    case is Bool.Type: ["type": "boolean"]
    case is Int.Type, is Int64.Type, is Int32.Type, is UInt32.Type, is UInt64.Type, is UInt16.Type,
      is UInt8.Type, is Int16.Type:
      ["type": "integer"]
    case is Double.Type, is Float.Type: ["type": "number"]
    case is Date.Type: ["type": "string", "format": "date-time"]
    case is Data.Type: ["type": "string", "format": "byte"]
    case is JSONValue.Type: [:]
    default: nil
    }
  }

  func objectSchema(for type: any Decodable.Type) -> ObjectSchema {
    let recording = RecordedObject()
    _ = try? type.init(from: SchemaDecoder(registry: self, recording: recording))
    var object = ObjectSchema(properties: recording.properties, required: recording.required)
    (type as? any SchemaDescribed.Type)?.describe(&object, in: context)
    return object
  }

  /// A value of `type` to hand back to the decoding initializer that asked for it.
  func sample<T: Decodable>(_ type: T.Type) throws -> T {
    if let enumeration = type as? any SchemaEnumeration.Type,
      let value = enumeration.schemaSample as? T
    {
      return value
    }
    return try T(from: SchemaDecoder(registry: self, recording: RecordedObject()))
  }
}

/// An object schema as it is being described.
struct ObjectSchema {
  var properties: [String: JSONValue]
  var required: [String]
  var description: String?

  /// Adds `keyword: value` to the schema of `property` (a `$ref` becomes an `allOf`, as
  /// siblings of `$ref` are ignored by older validators).
  mutating func set(_ property: String, _ keyword: String, _ value: JSONValue) {
    var schema = properties[property]?.objectValue ?? [:]
    if let ref = schema["$ref"] { schema = ["allOf": [["$ref": ref]]] }
    schema[keyword] = value
    properties[property] = .object(schema)
  }

  mutating func describe(_ property: String, _ text: String) {
    set(property, "description", .string(text))
  }

  mutating func bound(_ property: String, _ range: ClosedRange<Int>, default value: Int? = nil) {
    set(property, "minimum", .number(Double(range.lowerBound)))
    set(property, "maximum", .number(Double(range.upperBound)))
    if let value { set(property, "default", .number(Double(value))) }
  }

  mutating func length(_ property: String, _ range: ClosedRange<Int>) {
    set(property, "minLength", .number(Double(range.lowerBound)))
    set(property, "maxLength", .number(Double(range.upperBound)))
  }

  /// Keywords for the whole object (`allOf`, `oneOf`, `dependentSchemas`…).
  var extra: [String: JSONValue] = [:]

  var json: JSONValue {
    // An optional field may be absent or null (both decode as nil).
    var properties = self.properties
    for (name, schema) in properties where !required.contains(name) {
      properties[name] = Self.nullable(schema)
    }
    var schema: [String: JSONValue] = extra.merging([
      "type": "object", "properties": .object(properties),
    ]) { _, new in new }
    if !required.isEmpty { schema["required"] = .array(required.map { .string($0) }) }
    if let description { schema["description"] = .string(description) }
    return .object(schema)
  }

  /// `schema`, or null.
  static func nullable(_ schema: JSONValue) -> JSONValue {
    guard var object = schema.objectValue, case .string(let type)? = object["type"] else {
      return ["anyOf": [schema, ["type": "null"]]]
    }
    object["type"] = [.string(type), "null"]
    if case .array(let cases)? = object["enum"] { object["enum"] = .array(cases + [.null]) }
    return .object(object)
  }
}

/// What the configuration decides about schemas.
struct SchemaContext: Sendable {
  var limits: SandboxLimits
  /// Whether this host's networking enforces per-sandbox allow and deny lists (bridge); where
  /// it does not, the lists must be empty.
  var destinationLists: Bool = true
}

/// Types whose schema needs more than their shape: a name, bounds, defaults, descriptions.
protocol SchemaDescribed {
  static var schemaName: String { get }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext)
}

extension SchemaDescribed {
  static var schemaName: String {
    String(reflecting: Self.self).split(separator: ".").dropFirst().joined()
  }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {}
}

/// String enumerations, documented with their cases.
protocol SchemaEnumeration {
  static var schemaCases: [String] { get }
  static var schemaSample: Self { get }
}

extension SchemaEnumeration where Self: CaseIterable & RawRepresentable, RawValue == String {
  static var schemaCases: [String] { allCases.map(\.rawValue) }
  static var schemaSample: Self { allCases.first! }
}

protocol SchemaOptional { static var schemaWrapped: any Decodable.Type { get } }
extension Optional: SchemaOptional where Wrapped: Decodable {
  static var schemaWrapped: any Decodable.Type { Wrapped.self }
}

protocol SchemaArray { static var schemaElement: any Decodable.Type { get } }
extension Array: SchemaArray where Element: Decodable {
  static var schemaElement: any Decodable.Type { Element.self }
}

protocol SchemaDictionary { static var schemaValue: any Decodable.Type { get } }
extension Dictionary: SchemaDictionary where Key == String, Value: Decodable {
  static var schemaValue: any Decodable.Type { Value.self }
}
