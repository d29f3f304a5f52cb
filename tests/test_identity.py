"""Pseudonymous ids (issue 19 fault 8): HMAC under a per-installation secret, not reversible."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medscan.dicom import discover, identity
from medscan.dicom.identity import (
    SecretError,
    patient_key,
    resolve_secret,
    secret_fingerprint,
)


@pytest.fixture()
def fresh_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A secret file path that does not exist yet (first use)."""
    path = tmp_path / "cfg" / "medscan" / "id-secret"
    monkeypatch.setenv(identity.SECRET_FILE_ENV, str(path))
    monkeypatch.delenv(identity.SECRET_ENV, raising=False)
    monkeypatch.delenv(identity.LEGACY_SALT_ENV, raising=False)
    return path


def test_secret_made_on_first_use_private_and_stable(fresh_secret: Path) -> None:
    assert not fresh_secret.exists()
    key = resolve_secret()
    assert fresh_secret.is_file()
    assert stat.S_IMODE(fresh_secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh_secret.parent.stat().st_mode) & 0o077 == 0
    assert len(bytes.fromhex(key.decode())) == identity.SECRET_BYTES
    assert resolve_secret() == key
    fp = secret_fingerprint()
    assert fp.startswith("hmac-sha256:") and key.decode() not in fp


def test_xdg_config_home_is_the_default_location(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(identity.SECRET_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert identity.secret_file() == tmp_path / "xdg" / "medscan" / "id-secret"


def test_concurrent_first_use_agrees_on_one_secret(fresh_secret: Path) -> None:
    """Shards starting at once must not each make their own secret (ids would differ)."""
    code = "from medscan.dicom.identity import secret_fingerprint as f; print(f())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy()) for _ in range(4)]
    prints = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(prints) == 1
    assert prints == {identity.fingerprint_of(fresh_secret.read_text().strip().encode())}


def test_env_secret_overrides_file_and_gives_stable_ids(
    sample_ct: Path, fresh_secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_file = [s.case_id for s in discover(sample_ct).series]
    monkeypatch.setenv(identity.SECRET_ENV, "project-secret-" + "ab" * 16)
    shared = [(s.case_id, s.patient_id) for s in discover(sample_ct).series]
    assert shared == [(s.case_id, s.patient_id) for s in discover(sample_ct).series]
    assert {c for c, _ in shared}.isdisjoint(by_file)


def test_unusable_secret_file_is_a_named_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(identity.SECRET_FILE_ENV, str(blocker / "id-secret"))
    monkeypatch.delenv(identity.SECRET_ENV, raising=False)
    monkeypatch.delenv(identity.LEGACY_SALT_ENV, raising=False)
    with pytest.raises(SecretError, match="not-a-folder"):
        resolve_secret()


def _old_public_salt_id(key: str) -> str:
    """The id as the old code made it: sha256 of a published salt (the attack's model)."""
    return "pt-" + hashlib.sha256(f"medscan-pseudonym-v1\x00{key}".encode()).hexdigest()[:10]


def _enumerate(target: str, make_id) -> str | None:
    """Try every ``Lung_Dx-A0000`` .. ``Lung_Dx-A9999`` as the attacker of issue 19 did."""
    for n in range(10000):
        key = f"id:LUNG_DX-A{n:04d}"
        if make_id(key) == target:
            return key
    return None


def test_patient_id_resists_enumeration(sample_ct: Path, fresh_secret: Path) -> None:
    """The real sample's structured PatientID is not recovered from its id by enumeration."""
    ds = pydicom.dcmread(next(sample_ct.glob("*.dcm")), stop_before_pixels=True)
    truth = patient_key(ds)
    target = discover(sample_ct).series[0].patient_id
    # The attack works on the old scheme (control: the enumeration can find the ID) ...
    assert _enumerate(_old_public_salt_id(truth), _old_public_salt_id) == truth
    # ... and on the new one only with the secret key; without it, nothing matches.
    with_key = _enumerate(target, lambda k: identity.pseudonym("pt", k, domain="patient"))
    assert with_key == truth
    guesses = [lambda k: _old_public_salt_id(k),
               lambda k: identity.pseudonym("pt", k, salt="medscan-pseudonym-v1",
                                            domain="patient")]
    for guess in guesses:
        assert _enumerate(target, guess) is None


SHORT_SECRETS = {"empty file": ("file", ""), "3-byte file": ("file", "abc\n"),
                 "short env": ("env", "15-bytes-secret"), "short salt": ("salt", "site-42")}


@pytest.mark.parametrize("kind", list(SHORT_SECRETS))
def test_short_or_empty_secret_is_one_line_exit_2(kind: str, sample_ct: Path, tmp_path: Path
                                                   ) -> None:
    """Every command refuses a secret under 16 bytes with one line and exit 2, before any
    output exists (not a per-file "unreadable DICOM header" with exit 0)."""
    where, value = SHORT_SECRETS[kind]
    env = {k: v for k, v in os.environ.items()
           if k not in (identity.SECRET_ENV, identity.LEGACY_SALT_ENV)}
    secret = tmp_path / "id-secret"
    secret.write_text("0" * 64 if where != "file" else value)
    secret.chmod(0o600)
    env[identity.SECRET_FILE_ENV] = str(secret)
    if where == "env":
        env[identity.SECRET_ENV] = value
    salt = [f"--salt={value}"] if where == "salt" else []
    out = tmp_path / "out"
    runs = {"inspect": ["inspect", str(sample_ct), *salt],
            "segment": ["segment", f"input={sample_ct}", f"output={out}", "progress=false",
                        *([f"salt={value}"] if salt else [])]}
    for name, args in runs.items():
        r = subprocess.run([sys.executable, "-m", "medscan.cli", *args], capture_output=True,
                           text=True, env=env, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and "at least 16" in lines[0], (name, r.stderr)
        assert "unreadable" not in r.stdout + r.stderr
    assert not out.exists()


def test_secret_file_as_hex_text_or_raw_bytes(sample_ct: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' "32 random bytes" file (``head -c 32 /dev/urandom``) is a key as it is, not a
    codec error; medscan's own hex text file keeps giving the key (and the ids) it gave."""
    monkeypatch.delenv(identity.SECRET_ENV, raising=False)
    monkeypatch.delenv(identity.LEGACY_SALT_ENV, raising=False)
    # deterministic stand-in for 32 random bytes: non-ASCII, whitespace bytes at both ends
    raw = b"\n " + hashlib.sha256(b"medscan test key").digest()[:28] + b"\x9a\n"
    hex_text = hashlib.sha256(b"hex key").hexdigest()
    uid = discover(sample_ct).series[0].slices[0].series_uid
    for content, key in ((raw, raw),  # byte for byte
                         (f"  {hex_text}\n".encode(), hex_text.encode())):  # stripped, as before
        path = tmp_path / f"secret-{len(content)}"
        path.write_bytes(content)
        path.chmod(0o600)
        monkeypatch.setenv(identity.SECRET_FILE_ENV, str(path))
        assert resolve_secret() == key
        digest = hmac.new(key, b"case\x00" + uid.encode(), hashlib.sha256).hexdigest()
        assert discover(sample_ct).series[0].case_id == "ct-" + digest[:10]
    short = tmp_path / "short"
    short.write_bytes(b"\x9a" * 8)
    monkeypatch.setenv(identity.SECRET_FILE_ENV, str(short))
    with pytest.raises(SecretError, match=r"holds 8 bytes; .* at least 16"):
        resolve_secret()


def test_salt_of_16_bytes_is_the_key(sample_ct: Path, fresh_secret: Path) -> None:
    salt = "a-project-secret-of-32-bytes-xyz"
    ids = [s.case_id for s in discover(sample_ct, salt=salt).series]
    assert ids == [identity.case_pseudonym("CT", s.slices[0].series_uid, 0, salt)
                   for s in discover(sample_ct, salt=salt).series]
    assert ids != [s.case_id for s in discover(sample_ct).series]
    with pytest.raises(SecretError, match="salt= holds 7 bytes"):
        resolve_secret("site-42")


def test_loose_permissions_warned_once_per_process(sample_ct: Path, tmp_path: Path) -> None:
    secret = tmp_path / "id-secret"
    secret.write_text("0" * 64)
    secret.chmod(0o644)
    env = {**os.environ, identity.SECRET_FILE_ENV: str(secret)}
    env.pop(identity.SECRET_ENV, None)
    r = subprocess.run([sys.executable, "-m", "medscan.cli", "inspect", str(sample_ct)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("readable by others") == 1, r.stderr
