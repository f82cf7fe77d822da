"""AES-128-CMAC through the process's libcrypto (drivers/codec/cmac.py): RFC 4493, a cross-check against
``cryptography``, both libcrypto interfaces, every set-up failure as a clear error, no leak, W^X, no
``cryptography`` on the agent's run path."""

from __future__ import annotations

import ctypes
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from drivers.codec import cmac
from drivers.codec.cmac import AesCmac, CmacUnavailable
from tests.support.mdwe import MDWE_PRELUDE

ROOT = Path(__file__).resolve().parents[2]
INTERFACES = ["EVP_MAC", "CMAC_CTX"]  # OpenSSL 3 exports both; CMAC_CTX is what an OpenSSL 1.1 system gets

# RFC 4493 §4: AES-128 key and the four messages (empty, 16, 40 and 64 bytes) with their tags.
RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MESSAGE = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
RFC4493_TAGS = [
    (0, "bb1d6929e95937287fa37d129b756746"),
    (16, "070a16b46b4d4144f79bdd9dd04a287c"),
    (40, "dfa66747de9ae63030ca32611497c827"),
    (64, "51f0bebf7e3b9d92fc49741779363cfe"),
]


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize(("length", "tag"), RFC4493_TAGS)
def test_rfc4493_vectors(interface: str, length: int, tag: str) -> None:
    assert AesCmac(RFC4493_KEY, interface=interface).tag(RFC4493_MESSAGE[:length]) == bytes.fromhex(tag)


@pytest.mark.parametrize("interface", INTERFACES)
def test_agrees_with_cryptography_on_random_keys_and_messages(interface: str) -> None:
    # cryptography is imported here only, as an independent implementation (its own OpenSSL build).
    from cryptography.hazmat.primitives import cmac as reference
    from cryptography.hazmat.primitives.ciphers import algorithms

    rng = random.Random(4493)
    keys = [rng.randbytes(16) for _ in range(40)]
    macs = {key: AesCmac(key, interface=interface) for key in keys}
    for _ in range(3000):
        key = rng.choice(keys)
        # Lengths around every block boundary a frame can have, and NUL bytes inside the message.
        message = rng.randbytes(rng.choice([0, 1, 15, 16, 17, 31, 32, 33, rng.randrange(0, 260)]))
        expected = reference.CMAC(algorithms.AES(key))
        expected.update(message)
        assert macs[key].tag(message) == expected.finalize(), (interface, key.hex(), message.hex())


@pytest.mark.parametrize("interface", INTERFACES)
def test_keyed_context_is_never_used_up(interface: str) -> None:
    first, second = AesCmac(RFC4493_KEY, interface=interface), AesCmac(bytes(16), interface=interface)
    tags = [first.tag(RFC4493_MESSAGE[:n]) for n in range(65)]
    other = [second.tag(RFC4493_MESSAGE[:n]) for n in range(65)]
    for _ in range(3):  # repeated and interleaved: each tag is on a fresh duplicate of the keyed context
        assert [first.tag(RFC4493_MESSAGE[:n]) for n in range(65)] == tags
        assert [second.tag(RFC4493_MESSAGE[:n]) for n in range(65)] == other
    assert len(set(tags) | set(other)) == 130


def test_one_key_shared_by_threads() -> None:
    mac = AesCmac(RFC4493_KEY)
    expected = {length: bytes.fromhex(tag) for length, tag in RFC4493_TAGS}
    wrong: list[tuple[int, bytes]] = []

    def work() -> None:
        for i in range(4000):
            length = RFC4493_TAGS[i % 4][0]
            got = mac.tag(RFC4493_MESSAGE[:length])
            if got != expected[length]:
                wrong.append((length, got))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong and not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("bad_key", [bytes.fromhex("a5c3e1f09b7d2468ace0"), bytes.fromhex("a5c3e1f09b7d2468") * 3,
                                     bytearray(16), "k" * 16])
def test_bad_key_rejected_without_leaking_it(bad_key: Any) -> None:
    with pytest.raises(ValueError, match="must be 16 bytes") as info:
        AesCmac(bad_key)
    if isinstance(bad_key, bytes):
        assert bad_key.hex() not in str(info.value) and repr(bad_key) not in str(info.value)
    assert "a5c3" not in repr(AesCmac(bytes.fromhex("a5c3e1f09b7d2468") * 2))


def test_the_library_is_the_one_ssl_already_mapped() -> None:
    import _ssl  # noqa: F401

    with open("/proc/self/maps", encoding="utf-8") as maps:
        mapped = {line.split(maxsplit=5)[5].strip() for line in maps if "/libcrypto.so" in line}
    assert cmac.load().library in mapped
    assert len(mapped) == 1  # the libcrypto of ssl; no second copy was loaded for CMAC


# --- every set-up failure is a CmacUnavailable at load(), never a crash later ---------------------------------------


@pytest.fixture
def fresh_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """load() without its cache, so a test's broken library is really bound; the cache is restored after."""
    monkeypatch.setattr(cmac, "_loaded", {})


def test_no_libcrypto_anywhere(monkeypatch: pytest.MonkeyPatch, fresh_load: None) -> None:
    monkeypatch.setattr(cmac, "_mapped_libcrypto", lambda: "/nonexistent/libcrypto.so.3")
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    real_pydll = ctypes.PyDLL

    def no_crypto(name: str, *args: Any, **kwargs: Any) -> ctypes.PyDLL:
        if "crypto" in name:
            raise OSError(f"{name}: cannot open shared object file")
        return real_pydll(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "PyDLL", no_crypto)
    with pytest.raises(CmacUnavailable, match=r"no libcrypto .*/nonexistent/libcrypto.so.3.*hint: install"):
        cmac.load()


def test_a_library_without_cmac_is_named(monkeypatch: pytest.MonkeyPatch, fresh_load: None) -> None:
    libc = ctypes.PyDLL(None)
    monkeypatch.setattr(cmac, "_open_libcrypto", lambda: (libc, "libc"))
    with pytest.raises(CmacUnavailable, match="does not export CMAC_CTX_new"):
        cmac.load()
    with pytest.raises(CmacUnavailable, match="does not export EVP_MAC_fetch"):
        cmac.load("EVP_MAC")


class _FakeFunction:
    """Stands in for a ctypes function: accepts restype/argtypes, returns a set value (0 or None = failure)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.result


class _FakeLibcrypto:
    """A libcrypto whose EVP_MAC functions return what a test sets: NULL pointers, 0 for failure."""

    _name = "fake-libcrypto.so.3"

    def __init__(self, **results: Any) -> None:
        ok = {"EVP_MAC_fetch": 1, "EVP_MAC_CTX_new": 2, "EVP_MAC_free": None, "EVP_MAC_init": 1,
              "EVP_MAC_CTX_dup": 3, "EVP_MAC_update": 1, "EVP_MAC_final": 1, "EVP_MAC_CTX_free": None}
        for name, result in {**ok, **results}.items():
            setattr(self, name, _FakeFunction(result))
        self.OSSL_PARAM_construct_utf8_string = lambda *args: cmac._OsslParam()
        self.OSSL_PARAM_construct_end = lambda: cmac._OsslParam()


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ({"EVP_MAC_fetch": None}, "EVP_MAC_fetch\\(CMAC\\) failed"),
        ({"EVP_MAC_init": 0}, "EVP_MAC_init\\(CMAC, AES-128-CBC\\) failed"),
        ({"EVP_MAC_update": 0}, "EVP_MAC_update/EVP_MAC_final failed"),
        ({"EVP_MAC_final": 0}, "EVP_MAC_update/EVP_MAC_final failed"),
        ({}, "fails the RFC 4493 self-test"),  # every call "succeeds" but the tag is all zeros
    ],
)
def test_null_and_failure_returns_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, fresh_load: None, results: dict[str, Any], message: str
) -> None:
    lib = _FakeLibcrypto(**results)
    monkeypatch.setattr(cmac, "_open_libcrypto", lambda: (lib, lib._name))
    with pytest.raises(CmacUnavailable, match=message):
        cmac.load()
    # The keyed context (when one was made) and every duplicate are freed, also on the failure paths.
    made = lib.EVP_MAC_CTX_new.calls + lib.EVP_MAC_CTX_dup.calls
    assert lib.EVP_MAC_CTX_free.calls == made


def test_out_of_memory_per_tag_is_an_exception_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    mac = AesCmac(RFC4493_KEY)
    backend = cmac.load()
    monkeypatch.setattr(backend, "_dup", _FakeFunction(None))  # EVP_MAC_CTX_dup -> NULL
    with pytest.raises(MemoryError, match="EVP_MAC_CTX_dup"):
        mac.tag(b"frame")
    monkeypatch.undo()
    assert mac.tag(RFC4493_MESSAGE[:16]) == bytes.fromhex(RFC4493_TAGS[1][1])


def test_unknown_interface_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown libcrypto interface"):
        cmac.load("AES-NI")


# --- process-level properties, each in a fresh interpreter --------------------------------------------------------


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


_NO_LEAK = r"""
import gc, json
from drivers.codec import cmac, frame
def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
key = bytes(range(16))
check = frame.mic_checker(key)
signed = frame.build(0xA1B2C3, 1, 2, bytes(range(20)), key=key)
body, mic = signed[:-4], signed[-4:]
for interface in ("EVP_MAC", "CMAC_CTX"):
    cmac.AesCmac(key, interface=interface).tag(body)
for _ in range(20_000):                                  # warm up: allocator arenas
    assert check(body, mic)
growth = {}
before = rss_kib()
for _ in range(100_000):                                 # 100k frames: a context duplicated and freed for each
    assert check(body, mic)
growth["frames"] = rss_kib() - before
before = rss_kib()
for i in range(5_000):                                   # 5k keyed contexts made and dropped, both interfaces
    cmac.AesCmac(i.to_bytes(16, "big"), interface=("EVP_MAC", "CMAC_CTX")[i % 2]).tag(body)
growth["keys"] = rss_kib() - before
for i in range(1024):                                    # fill the per-key cache (1024 live keyed contexts)
    frame.compute_mic(i.to_bytes(16, "little"), body)
before = rss_kib()
for i in range(1024, 6024):                              # 5k evictions: each evicted context is freed
    frame.compute_mic(i.to_bytes(16, "little"), body)
gc.collect()
growth["evictions"] = rss_kib() - before
print(json.dumps(growth))
"""


def test_100k_frames_and_5k_keys_do_not_grow_rss() -> None:
    proc = _python(_NO_LEAK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth_kib = json.loads(proc.stdout)
    # A keyed context with its AES schedule is about 1.2 KiB (measured: 1,024 cached keys hold 1.2 MiB), so a
    # leak would show as about 100 MiB for the frames and 6 MiB for the keys or evictions; the bounds are noise.
    assert growth_kib["frames"] < 256, growth_kib
    assert growth_kib["keys"] < 512, growth_kib
    assert growth_kib["evictions"] < 1024, growth_kib


_RUN_PATH = r"""
import sys
from agent.gateway.core import Gateway
from agent import cli, config
from agent.gateway import readings
from agent.gateway import publisher
from agent.gateway import journal
from drivers.codec import frame
key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
parsed = frame.parse(bytes.fromhex("1100A1B2C30000002A020100010374014AF0CE538F"))
assert frame.verify(parsed, key)
assert frame.mic_checker(key)(parsed.signed, parsed.mic)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "_cffi_backend", "cffi", "Crypto")))
"""


def test_the_agent_run_path_does_not_load_cryptography() -> None:
    proc = _python(_RUN_PATH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


_MDWE = MDWE_PRELUDE + r"""
from drivers.codec import cmac, frame
parsed = frame.parse(bytes.fromhex("1100A1B2C30000002A020100010374014AF0CE538F"))
assert frame.verify(parsed, bytes.fromhex("000102030405060708090a0b0c0d0e0f"))
assert cmac.AesCmac(bytes(16), interface="CMAC_CTX").tag(b"") == cmac.AesCmac(bytes(16)).tag(b"")
print("ok")
"""


def test_works_under_memory_deny_write_execute() -> None:
    """The unit's MemoryDenyWriteExecute=yes, as the kernel rule PR_SET_MDWE: ctypes calls need no W+X page."""
    proc = _python(_MDWE)
    if proc.returncode in (3, 4):
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3 needed): {proc.stdout.strip()}")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
