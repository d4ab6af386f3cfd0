"""Where the ClearML server is and how to log in, resolved the way the SDK resolves it.

`CLEARML_*` environment variables win; otherwise the clearml.conf named by
`CLEARML_CONFIG_FILE` (or `~/clearml.conf`) is read with pyhocon. The same settings therefore
drive the SDK inside core scripts and our own async client in the orchestrator.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from automation.errors import ClearMLConfigError, HoconError
from automation.specs.hocon import loads


class ClearMLSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    api_host: str
    web_host: str
    files_host: str
    access_key: str
    secret_key: SecretStr = Field(repr=False)
    config_file: Path | None = None

    @classmethod
    def load(cls) -> ClearMLSettings:
        conf_path = Path(os.environ.get("CLEARML_CONFIG_FILE") or Path.home() / "clearml.conf")
        conf: dict = {}
        if conf_path.is_file():
            try:
                conf = loads(conf_path.read_text(), what=str(conf_path)).get("api", {})
            except HoconError as exc:
                raise ClearMLConfigError(str(exc)) from exc
        creds = conf.get("credentials", {}) or {}

        def pick(env: str, value: object) -> str:
            return str(os.environ.get(env) or value or "").strip()

        api = pick("CLEARML_API_HOST", conf.get("api_server"))
        if not api:
            raise ClearMLConfigError(
                "no ClearML server configured: set CLEARML_API_HOST (and CLEARML_API_ACCESS_KEY / "
                "CLEARML_API_SECRET_KEY), point CLEARML_CONFIG_FILE at a clearml.conf, or source the "
                "env file `automation local up` writes"
            )
        web = pick("CLEARML_WEB_HOST", conf.get("web_server")) or _guess(api, "app")
        files = pick("CLEARML_FILES_HOST", conf.get("files_server")) or _guess(api, "files")
        key = pick("CLEARML_API_ACCESS_KEY", creds.get("access_key"))
        secret = pick("CLEARML_API_SECRET_KEY", creds.get("secret_key"))
        if not key or not secret:
            raise ClearMLConfigError(
                f"no credentials for the ClearML server at {api}: set CLEARML_API_ACCESS_KEY and "
                "CLEARML_API_SECRET_KEY or api.credentials in clearml.conf"
            )
        return cls(api_host=api.rstrip("/"), web_host=web.rstrip("/"), files_host=files.rstrip("/"),
                   access_key=key, secret_key=SecretStr(secret),
                   config_file=conf_path if conf_path.is_file() else None)


def _guess(api: str, prefix: str) -> str:
    # ClearML's hosted convention: api.example.com -> app.example.com / files.example.com
    return api.replace("://api.", f"://{prefix}.", 1) if "://api." in api else api
