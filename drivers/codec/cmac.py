"""AES-128-CMAC (RFC 4493) computed by the libcrypto that Python's ``ssl`` module has already mapped.

The agent needs one primitive, the node frame MIC. ``cryptography`` would bring its own statically linked OpenSSL
(about 6 MiB of resident memory on the gateway), while ``_ssl`` already links the system's libcrypto for MQTT TLS.
This module reaches that same library through ctypes *calls* only: no callbacks are made (no ``CFUNCTYPE``), so
no writable-and-executable memory is needed and ``MemoryDenyWriteExecute=yes`` holds.

Two interfaces of libcrypto are used, chosen by what the library exports:

- OpenSSL 3: ``EVP_MAC`` with the ``CMAC`` algorithm and the ``AES-128-CBC`` cipher.
- OpenSSL 1.1: the ``CMAC_CTX`` functions (deprecated in 3, still exported there, which is how they are tested).

Each key gets one keyed context, made once; every tag is computed on a duplicate of it, so the keyed context is
only ever read and may be shared between threads. :func:`load` finds the library, binds every function and checks
the result against RFC 4493 before anything uses it: a missing or unusable libcrypto is a :class:`CmacUnavailable`
at start-up, never a crash in the middle of a frame stream.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Final

from drivers.errors import DriverError

__all__ = ["BLOCK_SIZE", "KEY_SIZE", "AesCmac", "CmacUnavailable", "load"]

KEY_SIZE: Final = 16
"""AES-128 key size in bytes."""
BLOCK_SIZE: Final = 16
"""AES block size in bytes; also the full CMAC tag size."""

# RFC 4493 §4, example 2: checked by load() so a wrongly bound library is found before it verifies a frame.
_SELFTEST_KEY: Final = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
_SELFTEST_MESSAGE: Final = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
_SELFTEST_TAG: Final = bytes.fromhex("070a16b46b4d4144f79bdd9dd04a287c")


class CmacUnavailable(DriverError, RuntimeError):
    """libcrypto could not be found, lacks AES-CMAC, or gave a wrong answer to the RFC 4493 self-test."""


class _OsslParam(ctypes.Structure):
    # OSSL_PARAM from <openssl/core.h>, a public, stable struct in OpenSSL 3.
    _fields_ = [
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    ]


def _mapped_libcrypto() -> str | None:
    """Path of the libcrypto this process has mapped after ``import _ssl``, or None (static ``_ssl``, no /proc)."""
    import _ssl  # noqa: F401, PLC0415 - maps libssl and libcrypto into the process

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and "/libcrypto.so" in fields[5]:
                    # A library replaced on disk by an upgrade is listed as "path (deleted)"; dlopen of the path
                    # still finds the copy already loaded, by name.
                    return fields[5].rstrip("\n").removesuffix(" (deleted)")
    except OSError:
        return None
    return None


def _open_libcrypto() -> tuple[ctypes.CDLL, str]:
    """Open the libcrypto ``_ssl`` uses, else the system's; raises :class:`CmacUnavailable` when there is none."""
    # PyDLL, not CDLL: each call takes well under a microsecond, less than handing the GIL to another thread and
    # back would cost (and each hand-off can be a context switch of the gateway's radio or MQTT thread).
    errors = []
    mapped = _mapped_libcrypto()
    if mapped is not None:
        # dlopen of a mapped path returns the handle already loaded: no second copy, no extra memory.
        try:
            return ctypes.PyDLL(mapped), mapped
        except OSError as exc:
            errors.append(f"{mapped}: {exc}")
    from ctypes.util import find_library  # noqa: PLC0415 - only when /proc did not name the library (runs ldconfig)

    found = find_library("crypto")
    for name in dict.fromkeys(c for c in (found, "libcrypto.so.3", "libcrypto.so.1.1") if c is not None):
        try:
            return ctypes.PyDLL(name), name
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    raise CmacUnavailable(
        f"no libcrypto (OpenSSL 3 or 1.1) found for AES-CMAC ({'; '.join(errors)}) "
        "(hint: install the system OpenSSL library, e.g. apt install libssl3)"
    )


def _bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    try:
        func = getattr(lib, name)
    except AttributeError:
        raise CmacUnavailable(f"{lib._name} does not export {name}") from None
    func.restype = restype
    func.argtypes = argtypes
    return func


class _EvpMac:
    """OpenSSL 3: EVP_MAC "CMAC" over AES-128-CBC."""

    name = "EVP_MAC"

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.library = path
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        fetch = _bind(lib, "EVP_MAC_fetch", vp, vp, cp, cp)
        self._ctx_new = _bind(lib, "EVP_MAC_CTX_new", vp, vp)
        self._init = _bind(lib, "EVP_MAC_init", ctypes.c_int, vp, cp, sz, ctypes.POINTER(_OsslParam))
        self._dup = _bind(lib, "EVP_MAC_CTX_dup", vp, vp)
        self._update = _bind(lib, "EVP_MAC_update", ctypes.c_int, vp, cp, sz)
        # The length pointer is passed as NULL (allowed): the tag size is checked once, by the self-test.
        self._final = _bind(lib, "EVP_MAC_final", ctypes.c_int, vp, cp, vp, sz)
        self.free = _bind(lib, "EVP_MAC_CTX_free", None, vp)
        construct_utf8 = _bind(lib, "OSSL_PARAM_construct_utf8_string", _OsslParam, cp, cp, sz)
        construct_end = _bind(lib, "OSSL_PARAM_construct_end", _OsslParam)
        # The params must outlive every EVP_MAC_init call that reads them, and so must the strings they point at.
        self._cipher_name = ctypes.create_string_buffer(b"AES-128-CBC")
        self._params = (_OsslParam * 2)(construct_utf8(b"cipher", self._cipher_name, 0), construct_end())
        # One fetched algorithm, kept for the life of the process (never freed): each context references it.
        self._mac = fetch(None, b"CMAC", None)
        if not self._mac:
            raise CmacUnavailable("EVP_MAC_fetch(CMAC) failed: this libcrypto has no CMAC in its default provider")

    def keyed(self, key: bytes) -> int:
        ctx = self._ctx_new(self._mac)
        if not ctx:
            raise MemoryError("EVP_MAC_CTX_new failed")
        if self._init(ctx, key, len(key), self._params) != 1:
            self.free(ctx)
            raise CmacUnavailable("EVP_MAC_init(CMAC, AES-128-CBC) failed: this libcrypto has no AES-128-CBC")
        return ctx

    def tag(self, keyed: int, data: bytes) -> bytes:
        # A duplicate per tag, not a reset of the keyed context: nothing shared is written, so no lock is needed
        # and a failure cannot leave the keyed context half-used. Four calls of about 0.5 µs each (ctypes).
        ctx = self._dup(keyed)
        if not ctx:
            raise MemoryError("EVP_MAC_CTX_dup failed")
        try:
            out = ctypes.create_string_buffer(BLOCK_SIZE)
            if self._update(ctx, data, len(data)) != 1 or self._final(ctx, out, None, BLOCK_SIZE) != 1:
                raise CmacUnavailable("EVP_MAC_update/EVP_MAC_final failed on a keyed AES-CMAC context")
            return out.raw
        finally:
            self.free(ctx)


class _CmacCtx:
    """OpenSSL 1.1 (and 3, deprecated): CMAC_CTX with EVP_aes_128_cbc()."""

    name = "CMAC_CTX"

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.library = path
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        self._ctx_new = _bind(lib, "CMAC_CTX_new", vp)
        self._init = _bind(lib, "CMAC_Init", ctypes.c_int, vp, cp, sz, vp, vp)
        self._copy = _bind(lib, "CMAC_CTX_copy", ctypes.c_int, vp, vp)
        self._update = _bind(lib, "CMAC_Update", ctypes.c_int, vp, cp, sz)
        self._final = _bind(lib, "CMAC_Final", ctypes.c_int, vp, cp, ctypes.POINTER(sz))
        self.free = _bind(lib, "CMAC_CTX_free", None, vp)
        self._cipher = _bind(lib, "EVP_aes_128_cbc", vp)()
        if not self._cipher:
            raise CmacUnavailable("EVP_aes_128_cbc() returned NULL")

    def keyed(self, key: bytes) -> int:
        ctx = self._ctx_new()
        if not ctx:
            raise MemoryError("CMAC_CTX_new failed")
        if self._init(ctx, key, len(key), self._cipher, None) != 1:
            self.free(ctx)
            raise CmacUnavailable("CMAC_Init(AES-128-CBC) failed")
        return ctx

    def tag(self, keyed: int, data: bytes) -> bytes:
        ctx = self._ctx_new()
        if not ctx:
            raise MemoryError("CMAC_CTX_new failed")
        try:
            out = ctypes.create_string_buffer(BLOCK_SIZE)
            size = ctypes.c_size_t(0)
            if (self._copy(ctx, keyed) != 1 or self._update(ctx, data, len(data)) != 1
                    or self._final(ctx, out, size) != 1):
                raise CmacUnavailable("CMAC_CTX_copy/CMAC_Update/CMAC_Final failed on a keyed AES-CMAC context")
            if size.value != BLOCK_SIZE:
                raise CmacUnavailable(f"CMAC_Final gave {size.value} bytes, expected {BLOCK_SIZE}")
            return out.raw
        finally:
            self.free(ctx)


_Backend = _EvpMac | _CmacCtx
_lock = threading.Lock()
_loaded: dict[str, _Backend] = {}


def load(interface: str | None = None) -> _Backend:
    """Find libcrypto, bind AES-CMAC and check it against RFC 4493; cached, safe to call from any thread.

    Args:
        interface: ``"EVP_MAC"`` or ``"CMAC_CTX"`` to force one (tests); None picks EVP_MAC when the library
            exports it (OpenSSL 3), else CMAC_CTX (OpenSSL 1.1).

    Raises:
        CmacUnavailable: no libcrypto, a function missing, a NULL from libcrypto while setting up, or a wrong
            self-test tag. The message names the library and the failing step, never key bytes.
    """
    if interface not in (None, _EvpMac.name, _CmacCtx.name):
        raise ValueError(f"unknown libcrypto interface {interface!r}")
    key = interface or ""
    with _lock:
        backend = _loaded.get(key)
        if backend is not None:
            return backend
        lib, path = _open_libcrypto()
        if interface is None:
            interface = _EvpMac.name if hasattr(lib, "EVP_MAC_fetch") else _CmacCtx.name
        backend = (_EvpMac if interface == _EvpMac.name else _CmacCtx)(lib, path)
        keyed = backend.keyed(_SELFTEST_KEY)
        try:
            tag = backend.tag(keyed, _SELFTEST_MESSAGE)
        finally:
            backend.free(keyed)
        if tag != _SELFTEST_TAG:
            raise CmacUnavailable(f"AES-CMAC through {path} ({interface}) fails the RFC 4493 self-test")
        _loaded[key] = backend
        return backend


class AesCmac:
    """AES-128-CMAC under one key: a keyed libcrypto context, duplicated for every tag.

    Thread-safe: :meth:`tag` only reads the keyed context. The context is freed (and its key schedule cleansed
    by libcrypto) when the object is collected. The key is never kept on the Python side nor shown in a repr.
    """

    __slots__ = ("_backend", "_ctx", "_free")

    def __init__(self, key: bytes, *, interface: str | None = None) -> None:
        """Args:
            key: the 16-byte AES key (bytes).
            interface: see :func:`load`.

        Raises:
            ValueError: the key is not 16 bytes (the message gives only its length).
            CmacUnavailable: see :func:`load`.
        """
        self._ctx = None  # first: __del__ runs even when __init__ raises
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
            raise ValueError(f"AES-128-CMAC key must be {KEY_SIZE} bytes, got {size}")
        self._backend = backend = load(interface)
        self._free = backend.free
        self._ctx = backend.keyed(key)

    def tag(self, data: bytes) -> bytes:
        """The full 16-byte CMAC tag of ``data``.

        Args:
            data: the message, ``bytes`` of any length including empty (not bytearray or memoryview: the hot
                path passes the caller's buffer to libcrypto without a copy).

        Raises:
            MemoryError: libcrypto could not allocate the per-tag context.
            CmacUnavailable: libcrypto refused an update or final on a valid context (not expected once
                :func:`load` has passed its self-test).
        """
        return self._backend.tag(self._ctx, data)

    def __del__(self) -> None:
        if self._ctx:
            self._free(self._ctx)
            self._ctx = None

    def __repr__(self) -> str:
        return f"<AesCmac via {self._backend.name}>"

