import Foundation

/// The properties one object type asked for while being decoded by `SchemaDecoder`.
final class RecordedObject {
  var properties: [String: JSONValue] = [:]
  var required: [String] = []

  func record(_ key: String, _ schema: JSONValue, required isRequired: Bool) {
    properties[key] = schema
    if isRequired && !required.contains(key) { required.append(key) }
  }
}

/// A Decoder that answers every question with a plain value and writes down what was asked:
/// the keys of a keyed container, their types, and whether they were optional.
struct SchemaDecoder: Decoder {
  let registry: SchemaRegistry
  let recording: RecordedObject
  var codingPath: [any CodingKey] = []
  var userInfo: [CodingUserInfoKey: Any] { [:] }

  func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
    KeyedDecodingContainer(SchemaKeyedContainer<Key>(decoder: self))
  }

  func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
    EmptyUnkeyedContainer(codingPath: codingPath)
  }

  func singleValueContainer() throws -> any SingleValueDecodingContainer {
    SampleSingleValueContainer(decoder: self)
  }
}

struct SchemaKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
  let decoder: SchemaDecoder
  var codingPath: [any CodingKey] { decoder.codingPath }
  var allKeys: [Key] { [] }

  func contains(_ key: Key) -> Bool { true }
  func decodeNil(forKey key: Key) throws -> Bool { false }

  func note<T: Decodable>(_ type: T.Type, _ key: Key, required: Bool) {
    decoder.recording.record(
      key.stringValue, decoder.registry.schema(for: type), required: required)
  }

  func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
    note(type, key, required: true)
    return try decoder.registry.sample(type)
  }

  func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
    note(type, key, required: false)
    return nil
  }

  // The scalar requirements, each recorded like the generic ones.
  func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { req(type, key, false) }
  func decode(_ type: String.Type, forKey key: Key) throws -> String { req(type, key, "") }
  func decode(_ type: Double.Type, forKey key: Key) throws -> Double { req(type, key, 0) }
  func decode(_ type: Float.Type, forKey key: Key) throws -> Float { req(type, key, 0) }
  func decode(_ type: Int.Type, forKey key: Key) throws -> Int { req(type, key, 0) }
  func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { req(type, key, 0) }
  func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { req(type, key, 0) }
  func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { req(type, key, 0) }
  func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { req(type, key, 0) }
  func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { req(type, key, 0) }
  func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { req(type, key, 0) }
  func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { req(type, key, 0) }
  func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { req(type, key, 0) }
  func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { req(type, key, 0) }

  func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { opt(type, key) }
  func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { opt(type, key) }
  func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { opt(type, key) }
  func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { opt(type, key) }
  func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { opt(type, key) }
  func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { opt(type, key) }
  func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { opt(type, key) }
  func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { opt(type, key) }
  func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { opt(type, key) }
  func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { opt(type, key) }
  func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { opt(type, key) }
  func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { opt(type, key) }
  func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { opt(type, key) }
  func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { opt(type, key) }

  private func req<T: Decodable>(_ type: T.Type, _ key: Key, _ value: T) -> T {
    note(type, key, required: true)
    return value
  }

  private func opt<T: Decodable>(_ type: T.Type, _ key: Key) -> T? {
    note(type, key, required: false)
    return nil
  }

  func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key)
    throws -> KeyedDecodingContainer<NestedKey>
  {
    // Hand-written nesting: the nested keys are not described, only that an object is there.
    decoder.recording.record(key.stringValue, ["type": "object"], required: true)
    return KeyedDecodingContainer(
      SchemaKeyedContainer<NestedKey>(
        decoder: SchemaDecoder(registry: decoder.registry, recording: RecordedObject())))
  }

  func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
    decoder.recording.record(key.stringValue, ["type": "array"], required: true)
    return EmptyUnkeyedContainer(codingPath: codingPath)
  }

  func superDecoder() throws -> any Decoder { decoder }
  func superDecoder(forKey key: Key) throws -> any Decoder { decoder }
}

/// Arrays decode as empty: their element type is described from the type, not from values.
struct EmptyUnkeyedContainer: UnkeyedDecodingContainer {
  var codingPath: [any CodingKey]
  var count: Int? { 0 }
  var isAtEnd: Bool { true }
  var currentIndex: Int { 0 }

  mutating func decodeNil() throws -> Bool { true }
  mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
    throw DecodingError.valueNotFound(
      type, .init(codingPath: codingPath, debugDescription: "schema sampling: no elements"))
  }
  mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws
    -> KeyedDecodingContainer<NestedKey>
  {
    throw DecodingError.valueNotFound(
      Any.self, .init(codingPath: codingPath, debugDescription: "schema sampling: no elements"))
  }
  mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { self }
  mutating func superDecoder() throws -> any Decoder {
    throw DecodingError.valueNotFound(
      Any.self, .init(codingPath: codingPath, debugDescription: "schema sampling: no elements"))
  }
}

/// Single values get a plain value of what they ask for (`null` when they ask whether they are).
struct SampleSingleValueContainer: SingleValueDecodingContainer {
  let decoder: SchemaDecoder
  var codingPath: [any CodingKey] { decoder.codingPath }

  func decodeNil() -> Bool { true }
  func decode(_ type: Bool.Type) throws -> Bool { false }
  func decode(_ type: String.Type) throws -> String { "" }
  func decode(_ type: Double.Type) throws -> Double { 0 }
  func decode(_ type: Float.Type) throws -> Float { 0 }
  func decode(_ type: Int.Type) throws -> Int { 0 }
  func decode(_ type: Int8.Type) throws -> Int8 { 0 }
  func decode(_ type: Int16.Type) throws -> Int16 { 0 }
  func decode(_ type: Int32.Type) throws -> Int32 { 0 }
  func decode(_ type: Int64.Type) throws -> Int64 { 0 }
  func decode(_ type: UInt.Type) throws -> UInt { 0 }
  func decode(_ type: UInt8.Type) throws -> UInt8 { 0 }
  func decode(_ type: UInt16.Type) throws -> UInt16 { 0 }
  func decode(_ type: UInt32.Type) throws -> UInt32 { 0 }
  func decode(_ type: UInt64.Type) throws -> UInt64 { 0 }
  func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.registry.sample(type) }
}
