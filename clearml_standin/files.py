"""The stand-in's file server: ClearML's HTTP storage protocol over a directory.

The SDK uploads with a multipart POST to `<files>/<prefix>/` whose form field NAME is the target
path below that prefix, and downloads with a plain GET of `<files>/<path>`; DELETE removes.
Files are written to a temporary name and renamed into place, so a killed server never leaves a
half-written artifact behind under its final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

_CHUNK = 1024 * 1024


class UnsafePath(ValueError):
    pass


def safe_join(root: Path, *parts: str) -> Path:
    """Join URL path parts below root, refusing absolute paths and `..` escapes."""
    rel = PurePosixPath(*[p.strip("/") for p in parts if p and p.strip("/")])
    if any(seg in ("..", "") for seg in rel.parts) or rel.is_absolute():
        raise UnsafePath(f"unsafe path: {rel}")
    target = (root / rel).resolve()
    if root.resolve() not in (target, *target.parents):
        raise UnsafePath(f"path escapes the file root: {rel}")
    return target


class FileServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "HEAD", "POST", "PUT", "DELETE"])]
        )

    async def handle(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        try:
            if request.method in ("POST", "PUT"):
                return await self._upload(request, path)
            target = safe_join(self.root, path)
        except UnsafePath as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if request.method == "DELETE":
            if not target.is_file():
                return JSONResponse({"error": f"not found: {path}"}, status_code=404)
            target.unlink()
            return JSONResponse({"deleted": path})
        if not target.is_file():
            return JSONResponse({"error": f"not found: {path}"}, status_code=404)
        return FileResponse(target)

    async def _upload(self, request: Request, prefix: str) -> Response:
        form = await request.form(max_files=10_000, max_fields=10_000)
        saved: list[str] = []
        try:
            for field_name, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    continue
                target = safe_join(self.root, prefix, field_name)
                await self._store(value, target)
                saved.append(str(target.relative_to(self.root.resolve())))
        finally:
            await form.close()
        if not saved:
            return JSONResponse({"error": "no file parts in upload"}, status_code=400)
        return JSONResponse({"uploaded": saved})

    @staticmethod
    async def _store(upload: UploadFile, target: Path) -> None:
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
