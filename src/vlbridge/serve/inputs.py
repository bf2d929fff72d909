"""Request reading for the server: OpenAI-shaped errors, JSON / multipart bodies, images from base64.

Every error the server returns has OpenAI's shape:

    {"error": {"message": "one line", "type": "invalid_request_error", "param": "image", "code": null}}

Images arrive as multipart file parts or as strings in JSON: a `data:image/...;base64,` URL
or bare base64. They are never fetched: an http(s) URL is refused with 400. Bytes that are not
a decodable image (or a data URL of a non-image type) get 415; malformed base64 gets 400.
Images over `MAX_IMAGE_PIXELS` are refused from their header (415), before decoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from PIL import Image

from vlbridge import jsontext
from vlbridge.data.records import BadImage, open_image
from vlbridge.errors import one_line

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)
ERROR_TYPES = {  # HTTP status -> OpenAI error type
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
    413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error", 503: "service_unavailable",
}


class ApiError(Exception):
    """An error answered to the client in OpenAI's shape with HTTP `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status  # HTTP status code
        self.message = one_line(Exception(message), limit=400)  # one line, what was expected and what came
        self.param = param  # the request field at fault, when there is one
        self.code = code  # a machine-readable code (e.g. "model_not_found"), optional

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return error_body(self.message, kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def read_body(request) -> tuple[dict, dict[str, list[bytes]]]:
    """(fields, files) of a JSON or multipart request; files maps a part name to its uploads' bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request)
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; expected a JSON object (or a multipart form with an image)")
    try:
        fields = jsontext.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from err
    if not isinstance(fields, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(fields).__name__}")
    return fields, {}


async def _read_multipart(request) -> tuple[dict, dict[str, list[bytes]]]:
    try:
        form = await request.form()
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart raises several kinds for broken forms
        raise ApiError(400, f"cannot read the multipart form: {err}") from err
    fields: dict[str, Any] = {}
    files: dict[str, list[bytes]] = {}
    for name, value in form.multi_items():
        if hasattr(value, "read"):
            files.setdefault(name, []).append(await value.read())
        elif name in fields:
            existing = fields[name]
            fields[name] = (existing if isinstance(existing, list) else [existing]) + [value]
        else:
            fields[name] = value
    return fields, files


def image_from_value(value: Any, param: str) -> Image.Image:
    """An RGB image from a data URL / base64 string / {"url": ...} / raw bytes (see the module docstring)."""
    if isinstance(value, dict):
        value = value.get("url", value.get("data"))
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), param)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{param} must be an image: a data URL, base64 text or a multipart file", param)
    text = value.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I):
        raise ApiError(400, f"{param}: remote image URLs are never fetched; send the image as a data URL, base64 or a multipart file", param)
    match = DATA_URL.match(text)
    if match:
        mime = (match["mime"] or "").lower()
        if mime and not mime.startswith("image/"):
            raise ApiError(415, f"{param}: expected an image data URL, got one of type {mime}", param)
        if not match["b64"]:
            raise ApiError(400, f"{param}: only base64 data URLs are accepted (data:image/png;base64,...)", param)
        text = match["data"]
    return decode_image(_b64decode(text, param), param)


def _b64decode(text: str, param: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(400, f"{param}: not valid base64 ({err}); expected a data URL or base64-encoded image bytes", param) from err


def decode_image(data: bytes, param: str) -> Image.Image:
    """RGB PIL image of encoded bytes; 415 when they are not a readable image."""
    if not data:
        raise ApiError(400, f"{param}: the image is empty (0 bytes)", param)
    try:
        return open_image(data)
    except BadImage as err:
        reason = re.sub(r"\s*<[^>]*>", "", str(err)).replace("cannot decode image <bytes>: ", "")
        raise ApiError(415, f"{param}: not a readable image ({len(data)} bytes: {reason}); send PNG, JPEG, GIF, WebP or BMP",
                       param) from err


def images_of(fields: dict, files: dict[str, list[bytes]], names: tuple[str, ...], limit: int) -> list[Image.Image]:
    """Every image under the given field names (multipart files first, then JSON values or lists)."""
    images: list[Image.Image] = []
    for name in names:
        for data in files.get(name, []):
            images.append(decode_image(data, name))
        value = fields.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        images.extend(image_from_value(item, name) for item in values)
    if len(images) > limit:
        raise ApiError(400, f"at most {limit} images per request, got {len(images)}", names[0])
    return images


def one_image(fields: dict, files: dict[str, list[bytes]], name: str = "image") -> Image.Image:
    """Exactly one image under `name` (400 when none or several)."""
    images = images_of(fields, files, (name,), limit=1)
    if not images:
        raise ApiError(400, f"missing {name}: send it as a multipart file or as a data URL / base64 string", name)
    return images[0]


def text_field(fields: dict, name: str, required: bool = True, max_chars: int = 2000) -> str | None:
    """A non-empty string field (stripped), or None when optional and absent."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            raise ApiError(400, f"missing {name}: expected non-empty text", name)
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name} must be non-empty text, got {json.dumps(value)[:60]}", name)
    if len(value) > max_chars:
        raise ApiError(400, f"{name} is at most {max_chars} characters, got {len(value)}", name)
    return value.strip()


def int_field(fields: dict, name: str, default: int, low: int, high: int) -> int:
    """An integer field within [low, high] (multipart text is parsed), or the default."""
    value = fields.get(name, default)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(400, f"{name} must be a whole number, got {value!r}", name) from None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, got {value!r}", name)
    return value


def list_field(fields: dict, name: str, required: bool = True, separator: str = ",") -> list[str] | None:
    """A list of strings; a single string (multipart, or JSON shorthand) is split on `separator`."""
    value = fields.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"missing {name}: expected a list of strings", name)
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(separator) if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(400, f"{name} must be a list of strings, got {json.dumps(value)[:60]}", name)
    return value
