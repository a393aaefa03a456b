"""Per-user files and settings (ComfyUI's app/user_manager.py + app_settings.py), without HTTP.

Layout: `<user_dir>/users.json` ({id: name}) and one folder per user, `<user_dir>/<id>/`, holding the user's
workflows and `comfy.settings.json`. Without multi-user every request is the `default` user.

Every client-supplied path goes through `UserData.resolve`, which refuses NUL bytes and backslashes (400), absolute
paths, `..` components and symlinks whose target leaves the user's folder (403). ComfyUI normalises `a/../b` and
accepts it; we refuse any `..`. Users whose id starts with `__` are system users and never reachable by a client.
Writes are atomic (temp file + rename); users.json and settings are read-modify-written under one lock.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import msgspec

from .errors import UserDataError
from .storage import path_too_long

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
SYSTEM_USER_PREFIX = "__"
USERS_FILE = "users.json"
SETTINGS_FILE = "comfy.settings.json"
_SAFE_ID = re.compile(r"[^/\\\x00]+")  # one path segment: what a users.json id may be


def file_info(path: str | Path, root: str | Path) -> dict[str, Any]:
    """ComfyUI's FileInfo: relative posix path, size in bytes, modified/created in integer milliseconds."""
    stat = os.stat(path)
    return {"path": Path(os.path.relpath(path, root)).as_posix(), "size": stat.st_size,
            "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _parts(relpath: str) -> list[str]:
    """The components of a client path; unsafe ones raise (see the module docstring)."""
    if not isinstance(relpath, str):
        raise UserDataError("a user data path must be a string", status=400)
    if "\x00" in relpath or "\\" in relpath:
        raise UserDataError(f"invalid user data path: {relpath!r}", status=400)
    if relpath.startswith("/") or re.match(r"^[A-Za-z]:", relpath):
        raise UserDataError(f"absolute paths are not allowed: {relpath!r}", status=403)
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserDataError(f"path leads outside the user folder: {relpath!r}", status=403)
    return parts


class UserData:
    """The user folders of one engine. Thread-safe: handlers may call it from any worker thread."""

    def __init__(self, root: str | Path, *, multi_user: bool = False):
        self.root = Path(root).expanduser().absolute()
        self.multi_user = multi_user
        self._lock = threading.RLock()
        self._users = self._load_users() if multi_user else {DEFAULT_USER: DEFAULT_USER}

    # --- users ---------------------------------------------------------------------------------------------------

    def _load_users(self) -> dict[str, str]:
        path = self.root / USERS_FILE
        if not path.is_file():
            return {}
        try:
            users = msgspec.json.decode(path.read_bytes(), type=dict[str, str])
        except (msgspec.DecodeError, OSError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {}
        return {k: v for k, v in users.items() if _SAFE_ID.fullmatch(k) and k not in (".", "..")}

    def users(self) -> dict[str, str]:
        with self._lock:
            return dict(self._users)

    def add_user(self, name: str) -> str:
        """A new user id (`name` with runs of other characters than [a-zA-Z0-9-_] as `-`, `_`, a uuid4)."""
        if not isinstance(name, str) or not name.strip():
            raise UserDataError("username not provided", status=400)
        name = name.strip()
        user_id = re.sub(r"[^a-zA-Z0-9\-_]+", "-", name)
        if name.startswith(SYSTEM_USER_PREFIX) or user_id.startswith(SYSTEM_USER_PREFIX):
            raise UserDataError("System User prefix not allowed", status=400)
        with self._lock:
            if name in self._users.values():
                raise UserDataError("Duplicate username.", status=400)
            user_id = f"{user_id}_{uuid.uuid4()}"
            self._users[user_id] = name
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.root / USERS_FILE, msgspec.json.encode(self._users))
        return user_id

    def request_user(self, header: str | None) -> str:
        """The user of a request: the `Comfy-User` header with multi-user, else `default`; unknown users are 403."""
        user = (header or DEFAULT_USER) if self.multi_user else DEFAULT_USER
        with self._lock:
            known = user in self._users
        if not known or user.startswith(SYSTEM_USER_PREFIX):
            raise UserDataError(f"Unknown user: {user}", status=403)
        return user

    def user_root(self, user: str) -> Path:
        parts = _parts(user)
        if parts != [user] or user.startswith(SYSTEM_USER_PREFIX):
            raise UserDataError(f"Unknown user: {user}", status=403)
        return self.root / user

    def migrated(self, user: str = DEFAULT_USER) -> bool:
        """ComfyUI's `migrated`: the user's folder exists (settings live on the server already)."""
        return self.user_root(user).exists()

    # --- the one resolver ----------------------------------------------------------------------------------------

    def resolve(self, user: str, relpath: str, *, must_exist: bool = False) -> Path:
        """`<user folder>/<relpath>` made safe (symlinks followed, target inside the user's real folder)."""
        root = self.user_root(user)
        parts = _parts(relpath)
        full = root.joinpath(*parts)
        if path_too_long(full):
            raise UserDataError(f"user data path too long: {relpath[:80]!r}...", status=400)
        real_root = os.path.realpath(root)
        if not _within(os.path.realpath(full), real_root):
            raise UserDataError(f"path leads outside the user folder: {relpath!r}", status=403)
        if must_exist and not full.exists():
            raise UserDataError(f"not found: {relpath}", status=404)
        return full

    def _inside(self, user: str, path: str) -> bool:
        """Whether a path found while walking stays in the user's folder after following links."""
        return _within(os.path.realpath(path), os.path.realpath(self.user_root(user)))

    # --- listings ------------------------------------------------------------------------------------------------

    def list_files(self, user: str, directory: str, *, recurse: bool = False, full_info: bool = False,
                   split: bool = False) -> list[Any]:
        """GET /userdata: files (not folders) under `directory`, hidden names skipped like ComfyUI's glob."""
        base = self.resolve(user, directory)
        if not base.exists():
            raise UserDataError(f"directory not found: {directory}", status=404)
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recurse else []
            found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
        files = sorted(p for p in found if os.path.isfile(p) and self._inside(user, p))
        if full_info:
            return [file_info(p, base) for p in files]
        rel = [Path(os.path.relpath(p, base)).as_posix() for p in files]
        return [[r, *r.split("/")] for r in rel] if split else rel

    def list_v2(self, user: str, path: str = "") -> list[dict[str, Any]]:
        """GET /v2/userdata: every folder and file under `path`, paths relative to the user's folder, folders first."""
        root = self.user_root(user)
        target = self.resolve(user, path) if path else root
        if not target.exists():
            if target == root:
                return []
            raise UserDataError(f"not found: {path}", status=404)
        if not target.is_dir():
            raise UserDataError(f"not a directory: {path}", status=400)
        results: list[dict[str, Any]] = []
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = [d for d in dirnames if self._inside(user, os.path.join(dirpath, d))]
            for name in dirnames:
                rel = Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix()
                results.append({"name": name, "path": rel, "type": "directory"})
            for name in filenames:
                full = os.path.join(dirpath, name)
                if not self._inside(user, full):
                    continue
                entry: dict[str, Any] = {"name": name, "path": Path(os.path.relpath(full, root)).as_posix(),
                                         "type": "file"}
                try:
                    stat = os.stat(full)
                    entry["size"], entry["modified"] = stat.st_size, stat.st_mtime
                except OSError:  # a dangling link: listed without size, as ComfyUI does
                    pass
                results.append(entry)
        results.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return results

    # --- one file ------------------------------------------------------------------------------------------------

    def file_path(self, user: str, relpath: str) -> Path:
        """An existing file to send (a folder or a missing file is a 404)."""
        path = self.resolve(user, relpath)
        if not path.is_file():
            raise UserDataError(f"file not found: {relpath}", status=404)
        return path

    def _answer(self, user: str, path: Path, full_info: bool) -> Any:
        root = self.user_root(user)
        return file_info(path, root) if full_info else Path(os.path.relpath(path, root)).as_posix()

    def _destination(self, user: str, relpath: str, overwrite: bool) -> Path:
        """A path to write to, its folder created: a folder is a 400, an existing file without overwrite a 409."""
        path = self.resolve(user, relpath)
        if path == self.user_root(user) or path.is_dir():
            raise UserDataError(f"not a file name: {relpath!r}", status=400)
        if not overwrite and path.exists():
            raise UserDataError(f"file already exists: {relpath}", status=409)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserDataError(f"a file stands where the folder of {relpath!r} should be", status=409) from None
        return path

    def write(self, user: str, relpath: str, data: bytes, *, overwrite: bool = True, full_info: bool = False) -> Any:
        """Write `data` atomically; an existing file with `overwrite=False` is a 409. Returns the relative path
        (or ComfyUI's file info)."""
        path = self._destination(user, relpath, overwrite)
        self._write_atomic(path, data)
        return self._answer(user, path, full_info)

    def delete(self, user: str, relpath: str) -> None:
        path = self.file_path(user, relpath)
        path.unlink()

    def move(self, user: str, source: str, dest: str, *, overwrite: bool = True, full_info: bool = False) -> Any:
        """Rename a file inside the user's folder; a missing source is a 404, an existing dest without overwrite
        a 409."""
        src = self.file_path(user, source)
        target = self._destination(user, dest, overwrite)
        log.info("moving user file %s -> %s", src, target)
        shutil.move(src, target)
        return self._answer(user, target, full_info)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    # --- settings ------------------------------------------------------------------------------------------------

    def settings(self, user: str) -> dict[str, Any]:
        """The user's whole `comfy.settings.json` ({} when missing; an unreadable file is logged and taken as {})."""
        path = self.user_root(user) / SETTINGS_FILE
        with self._lock:
            if not path.is_file():
                return {}
            try:
                settings = msgspec.json.decode(path.read_bytes())
            except (msgspec.DecodeError, RecursionError) as exc:  # the file is a user file: any bytes may be there
                log.warning("ignoring unreadable settings file %s: %s", path, exc)
                return {}
        return settings if isinstance(settings, dict) else {}

    def setting(self, user: str, setting_id: str) -> Any:
        return self.settings(user).get(setting_id)

    def update_settings(self, user: str, changes: dict[str, Any]) -> None:
        """Shallow merge: each key of `changes` replaces the stored one."""
        if not isinstance(changes, dict):
            raise UserDataError("settings must be a JSON object", status=400)
        with self._lock:
            merged = {**self.settings(user), **changes}
            root = self.user_root(user)
            root.mkdir(parents=True, exist_ok=True)
            self._write_atomic(root / SETTINGS_FILE, msgspec.json.format(msgspec.json.encode(merged), indent=4))

    def set_setting(self, user: str, setting_id: str, value: Any) -> None:
        if not setting_id:
            raise UserDataError("no setting id given", status=400)
        self.update_settings(user, {setting_id: value})


__all__ = ["DEFAULT_USER", "SETTINGS_FILE", "USERS_FILE", "UserData", "file_info"]
