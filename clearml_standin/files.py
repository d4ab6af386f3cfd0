"""The stand-in's file server: ClearML's HTTP storage protocol over a directory.

The SDK uploads with a multipart POST to `<files>/<prefix>/` whose form field NAME is the target
path below that prefix, and downloads with a plain GET of `<files>/<path>`; DELETE removes.
Files are written to a temporary name and renamed into place, so a killed server never leaves a
half-written artifact behind under its final name.

Like clearml-server with file-server authentication on, every request needs the stack's
credentials: the session token the SDK attaches to requests for its files host (Bearer), or the
key pair (Basic). A request whose Host is not this server's own name is refused (a web page cannot
reach it through a rebound DNS name), and so is a change whose Origin is some other site. Files are
served with `nosniff` and, unless their type is known to be inert, as downloads, so an uploaded
HTML page never runs as a page of this origin.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from clearml_standin.tokens import Authenticator, Unauthorized

_CHUNK = 1024 * 1024
MAX_NAME_BYTES = 255  # one path segment, as on ext4
MAX_PATH_BYTES = 4096
MAX_UPLOAD_PARTS = 10_000
# Shown inline: types a browser never executes. Everything else is a download.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
    "text/plain", "text/csv", "application/json", "application/octet-stream",
})


class UnsafePath(ValueError):
    pass


def safe_join(root: Path, *parts: str) -> Path:
    """Join URL path parts below root, refusing absolute paths, `..` escapes, NUL bytes and names
    longer than a file system keeps."""
    joined = "/".join(p for p in parts if p)
    if "\x00" in joined:
        raise UnsafePath("unsafe path: a NUL byte in the name")
    if len(joined.encode("utf-8", errors="surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(f"path too long (over {MAX_PATH_BYTES} bytes)")
    rel = PurePosixPath(*[p.strip("/") for p in parts if p and p.strip("/")])
    if any(seg in ("..", "") for seg in rel.parts) or rel.is_absolute():
        raise UnsafePath(f"unsafe path: {rel}")
    for seg in rel.parts:
        if len(seg.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
            raise UnsafePath(f"a path segment is longer than {MAX_NAME_BYTES} bytes: {seg[:40]}...")
    target = (root / rel).resolve()
    if root.resolve() not in (target, *target.parents):
        raise UnsafePath(f"path escapes the file root: {rel}")
    return target


def allowed_hosts(*urls: str) -> list[str]:
    """Host names a request may carry: the servers' own, and loopback's."""
    hosts = {"127.0.0.1", "localhost", "[::1]"}
    for url in urls:
        name = urlsplit(url).hostname
        if name:
            hosts.add(name)
    return sorted(hosts)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def download_headers(target: Path, ctype: str) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    if ctype not in INLINE_TYPES:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(target.name, safe='')}"
    return headers


def serve_download(root: Path, path: str) -> Response:
    """A stored file as a safe response (nosniff, attachment unless inert), or a 400/404."""
    try:
        target = safe_join(root, path)
    except UnsafePath as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    if not target.is_file():
        return JSONResponse({"error": f"not found: {path}"}, status_code=404)
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return FileResponse(target, media_type=ctype, headers=download_headers(target, ctype))


class FileServer:
    def __init__(self, root: Path, auth: Authenticator, own_urls: tuple[str, ...], web_url: str = "") -> None:
        self.root = root
        self.auth = auth
        self.trusted_origins = {origin_of(u) for u in (*own_urls, web_url) if u}
        root.mkdir(parents=True, exist_ok=True)
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "HEAD", "POST", "PUT", "DELETE"])],
            middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(*own_urls))],
        )

    async def handle(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        if refused := self._refused(request):
            return refused
        try:
            if request.method in ("POST", "PUT"):
                return await self._upload(request, path)
            if request.method == "DELETE":
                return self._delete(path)
        except UnsafePath as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except OSError as exc:
            return _os_error(exc, path)
        return serve_download(self.root, path)

    def _refused(self, request: Request) -> Response | None:
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and origin not in self.trusted_origins:
            return JSONResponse({"error": f"cross-origin change refused (Origin {origin[:100]})"}, status_code=403)
        try:
            self.auth.check(request.headers.get("authorization", ""), f"{request.method} {request.url.path}")
        except Unauthorized as err:
            return JSONResponse({"error": err.msg}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def _delete(self, path: str) -> Response:
        target = safe_join(self.root, path)
        if not target.is_file():
            return JSONResponse({"error": f"not found: {path}"}, status_code=404)
        target.unlink()
        return JSONResponse({"deleted": path})

    async def _upload(self, request: Request, prefix: str) -> Response:
        try:
            form = await request.form(max_files=MAX_UPLOAD_PARTS, max_fields=MAX_UPLOAD_PARTS)
        except Exception as exc:  # starlette/multipart raise several kinds for a malformed body
            if isinstance(exc, OSError):
                raise
            return JSONResponse({"error": f"malformed multipart upload: {str(exc)[:200]}"}, status_code=400)
        saved: list[str] = []
        try:
            for field_name, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    continue
                target = safe_join(self.root, prefix, field_name)
                await _store(value, target)
                saved.append(str(target.relative_to(self.root.resolve())))
        finally:
            await form.close()
        if not saved:
            return JSONResponse({"error": "no file parts in upload"}, status_code=400)
        return JSONResponse({"uploaded": saved})


def _os_error(exc: OSError, path: str) -> Response:
    """What the file system refused, as the client's mistake where it is one."""
    conflicts = {errno.EISDIR: "is a folder", errno.ENOTDIR: "lies below a file", errno.EEXIST: "exists as a folder"}
    if exc.errno in conflicts:
        return JSONResponse({"error": f"cannot write {path[:200]}: the target or a folder above it "
                                      f"{conflicts[exc.errno]}"}, status_code=409)
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
        return JSONResponse({"error": f"unusable file name: {path[:200]}"}, status_code=400)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JSONResponse({"error": "the file server's disk is full"}, status_code=507)
    raise exc


async def _store(upload: UploadFile, target: Path) -> None:
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

