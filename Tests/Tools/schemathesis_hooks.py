"""schemathesis hooks for Atelier's API document (SchemathesisTests loads them).

Tar bodies (`application/x-tar`) are bytes on the wire, as schemathesis's own
application/octet-stream serializer sends them; without this it cannot send them at all.
"""

import schemathesis


@schemathesis.serializer("application/x-tar")
def tar_bytes(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return {"data": bytes(value)}
    if value is None:
        return {"data": b""}
    return {"data": str(value).encode()}
