"""The pseudonym secret: where it comes from, its checks, and its one-way fingerprint.

The HMAC key of medscan's pseudonymous ids (:mod:`medscan.dicom.identity` explains the ids and
the order of the sources: ``salt=``, ``$MEDSCAN_ID_SECRET``, the secret file). Standard library
only, so that light callers (the no-op rerun check, :mod:`medscan.rerun`) can read the key
without the DICOM stack.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("medscan.identity")

#: Environment variable holding the secret itself (a shared project secret).
SECRET_ENV = "MEDSCAN_ID_SECRET"
#: Old name of :data:`SECRET_ENV`, still read.
LEGACY_SALT_ENV = "MEDSCAN_ID_SALT"
#: Environment variable naming the secret file.
SECRET_FILE_ENV = "MEDSCAN_ID_SECRET_FILE"
#: Random bytes in a generated secret.
SECRET_BYTES = 32
#: Shortest secret accepted (bytes, from any source: ``salt=``, environment, file). 16 bytes is
#: 128 bits if random (NIST SP 800-107 asks an HMAC key of at least the security strength); a
#: short or guessable secret lets anyone with the output enumerate structured PatientIDs again.
MIN_SECRET_BYTES = 16

_FILE_KEYS: dict[str, bytes] = {}
_WARNED: set[str] = set()  # secret files whose loose permissions were already reported


class SecretError(RuntimeError):
    """The secret file cannot be read or created (message names the path and the reason)."""


def secret_file() -> Path:
    """Where the per-installation secret lives.

    Returns
    -------
    Path
        ``$MEDSCAN_ID_SECRET_FILE``, else ``$XDG_CONFIG_HOME/medscan/id-secret``, else
        ``~/.config/medscan/id-secret`` (XDG Base Directory specification).
    """
    explicit = os.environ.get(SECRET_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medscan" / "id-secret"


def _create_secret(path: Path) -> None:
    """Write a new random secret to ``path`` unless another process already made one.

    The secret is written to a private temporary file and hard-linked to ``path``: ``link``
    fails when ``path`` exists, so concurrent first uses (Slurm shards) agree on one secret and
    nobody reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(SECRET_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            log.info("created a new pseudonym secret (fingerprint %s); keep it: other "
                     "runs need the same secret to give the same ids",
                     fingerprint_of(path.read_text().strip().encode()))
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _read_secret_file(path: Path) -> bytes:
    if not path.exists():
        _create_secret(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and str(path) not in _WARNED:
        _WARNED.add(str(path))  # once per process, not once per file read
        log.warning("the pseudonym secret file is readable by others (mode %o); "
                    "chmod 600 it", stat.S_IMODE(mode))
    return _checked(key_from_file(path.read_bytes()), f"pseudonym secret file {path}")


def key_from_file(content: bytes) -> bytes:
    """The HMAC key a secret file's ``content`` holds.

    ASCII text (what medscan writes: 64 hex characters and a newline; any passphrase) is the
    key without its surrounding whitespace, as it always was (the same file gives the same ids).
    Anything else is binary (``head -c 32 /dev/urandom > id-secret``, the "32 random bytes"
    of the docs) and is the key byte for byte: no decoding, no stripping (a random 0x0a or
    0x20 at either end is part of the key).

    Parameters
    ----------
    content : bytes
        The file's bytes.

    Returns
    -------
    bytes
        The key (its length is checked by the caller).
    """
    try:
        return content.decode("ascii").strip().encode("ascii")
    except UnicodeDecodeError:
        return content


def mute_permission_warning() -> None:
    """Report no loose secret-file permissions in this process.

    Used in header-reading workers: the parent process has reported it once already.
    """
    _WARNED.add(str(secret_file()))


def _checked(key: bytes, source: str) -> bytes:
    """``key`` when at least :data:`MIN_SECRET_BYTES` long, else :class:`SecretError`."""
    if len(key) < MIN_SECRET_BYTES:
        what = "is empty" if not key else f"holds {len(key)} bytes"
        raise SecretError(f"{source} {what}; a pseudonym secret needs at least "
                          f"{MIN_SECRET_BYTES} (e.g. the output of `openssl rand -hex 32`), "
                          "else the ids can be reversed by guessing it")
    return key


def resolve_secret(salt: str | None = None) -> bytes:
    """The HMAC key of the pseudonyms (see the module docstring for the order).

    Parameters
    ----------
    salt : str, optional
        An explicit project secret; wins over the environment and the file.

    Returns
    -------
    bytes
        The key.

    Raises
    ------
    SecretError
        When the secret file cannot be created or read, or the secret (from any source) is
        shorter than :data:`MIN_SECRET_BYTES`: a short ``salt=`` never silently replaces a
        strong secret with a guessable one.
    """
    if salt is not None and salt != "":
        return _checked(salt.encode("utf-8"), "salt=")
    for name in (SECRET_ENV, LEGACY_SALT_ENV):
        env = os.environ.get(name)
        if env is not None and env != "":
            return _checked(env.encode("utf-8"), f"${name}")
    path = secret_file()
    key = str(path)
    if key not in _FILE_KEYS:
        try:
            _FILE_KEYS[key] = _read_secret_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise SecretError(f"cannot use the pseudonym secret file {path}: {reason} "
                              f"(set {SECRET_FILE_ENV} or {SECRET_ENV})") from exc
    return _FILE_KEYS[key]


def fingerprint_of(key: bytes) -> str:
    """One-way fingerprint ``"hmac-sha256:<16 hex>"`` of a key (safe to record and share)."""
    digest = hashlib.sha256(b"medscan-id-secret-fingerprint\x00" + key).hexdigest()
    return f"hmac-sha256:{digest[:16]}"


def secret_fingerprint(salt: str | None = None) -> str:
    """Fingerprint of the key :func:`resolve_secret` gives (never the key itself)."""
    return fingerprint_of(resolve_secret(salt))
