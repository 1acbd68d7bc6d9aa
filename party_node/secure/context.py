"""CKKS key material, one class per role so a secret context can never be sent by mistake.

- `CkksParams`: the agreed parameters. N = 8192 with a coefficient modulus of 60+60+60 = 180
  bits, below 218, the HomomorphicEncryption.org standard's bound for 128-bit security at
  N = 8192 (ternary secret). Two 60-bit data primes hold every product; the third is SEAL's
  special prime (key switching for the few fold rotations).
- `OwnKeys`: a party's own key pair (the secret key never leaves it; not picklable, no repr).
  Encrypts its own values (seeded symmetric ciphertexts: half the bytes) and decrypts results.
- `PeerKeys`: what a party holds of a peer: its public key (to re-randomise results it sends
  back) and Galois keys (to fold), never a secret.

Only `OwnKeys.public_blobs()` produces key bytes for the wire, once per task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import tenseal as ts
from tenseal import sealapi

from party_node.secure import seal_io
from party_node.secure.errors import SecureProtocolError

#: Blob names of a public key bundle (map onto Payload.blobs).
CONTEXT_BLOB = "he.context"
GALOIS_BLOB = "he.galois"

#: HomomorphicEncryption.org standard, 128-bit classical security, ternary secret.
_MAX_COEFF_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters both parties must agree on (checked when a peer's context loads)."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)

    def __post_init__(self) -> None:
        bound = _MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if bound is None:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(_MAX_COEFF_BITS_128)}")
        if sum(self.coeff_mod_bit_sizes) > bound:
            raise ValueError(
                f"coefficient modulus of {sum(self.coeff_mod_bit_sizes)} bits exceeds {bound}, "
                f"the 128-bit security bound for N={self.poly_modulus_degree}"
            )
        if len(self.coeff_mod_bit_sizes) != 3:
            raise ValueError("need two data primes and SEAL's special prime")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the data modulus fresh ciphertexts live in (the special prime excluded)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    def galois_element(self, step: int) -> int:
        """SEAL's Galois element for a left rotation by `step` slots (3^step mod 2N)."""
        step %= self.slots
        if step == 0:
            raise ValueError("rotation by 0 needs no key")
        return pow(3, step, 2 * self.poly_modulus_degree)


@dataclass
class HeEngine:
    """Encoder and evaluator over one SEAL context (own or a peer's)."""

    params: CkksParams
    seal_context: Any
    encoder: Any = field(init=False)
    evaluator: Any = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = sealapi.CKKSEncoder(self.seal_context)
        self.evaluator = sealapi.Evaluator(self.seal_context)

    def encode(self, values: np.ndarray, scale: float, parms_id: Any = None) -> Any:
        """Encode a real or complex slot vector (length <= slots) into a plaintext."""
        pt = sealapi.Plaintext()
        data = values.tolist()
        if parms_id is None:
            self.encoder.encode(data, scale, pt)
        else:
            self.encoder.encode(data, parms_id, scale, pt)
        return pt

    def load_ciphertext(self, data: bytes, what: str, primes: int, scale: float) -> Any:
        """A peer's ciphertext, checked to be at `primes` data primes and at exactly `scale`
        (a ciphertext with a scale of the sender's choosing would let it pick how we decode)."""
        ct = seal_io.load_ciphertext(self.seal_context, data, what)
        if ct.coeff_modulus_size() != primes:
            raise SecureProtocolError(f"{what}: ciphertext at an unexpected level")
        if not math.isclose(ct.scale, scale, rel_tol=1e-12):
            raise SecureProtocolError(f"{what}: ciphertext at an unexpected scale")
        return ct

    def last_prime(self) -> int:
        """The data prime a rescale divides by (the second one)."""
        parms = self.seal_context.first_context_data().parms()
        return int(parms.coeff_modulus()[-1].value())


class OwnKeys:
    """A party's CKKS key pair. Encrypts its own values, decrypts results; hands out only
    public material. Refuses pickling and prints no key material."""

    def __init__(self, params: CkksParams, galois_steps: Iterable[int]) -> None:
        self.params = params
        self._ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        seal_ctx = self._ctx.seal_context().data
        self.engine = HeEngine(params, seal_ctx)
        secret = self._ctx.secret_key().data
        # Symmetric (secret-key) encryption: the owner is the only one who encrypts under its
        # key, and a seeded symmetric ciphertext serializes to half the bytes.
        self._encryptor = sealapi.Encryptor(seal_ctx, secret)
        self._decryptor = sealapi.Decryptor(seal_ctx, secret)
        steps = sorted({s % params.slots for s in galois_steps} - {0})
        self.galois_steps = tuple(steps)
        keygen = sealapi.KeyGenerator(seal_ctx, secret)
        elements = [params.galois_element(s) for s in steps]
        # Seeded serialization: half the size of expanded keys on the wire.
        self._galois_blob = (
            seal_io.save_bytes(keygen.create_galois_keys(elements)) if steps else b""
        )

    def __repr__(self) -> str:
        return (
            f"OwnKeys(N={self.params.poly_modulus_degree}, galois_steps={len(self.galois_steps)})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("OwnKeys holds a secret key and cannot be pickled or copied off-party")

    def public_blobs(self) -> dict[str, bytes]:
        """Public context (public key only, no secret/relin keys) and Galois keys."""
        ctx_bytes = self._ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return {CONTEXT_BLOB: ctx_bytes, GALOIS_BLOB: self._galois_blob}

    def encrypt_bytes(self, slots: np.ndarray, scale: float) -> bytes:
        """Encrypt a slot vector; the serialized, seeded ciphertext (half the usual size)."""
        pt = self.engine.encode(slots, scale)
        return seal_io.save_bytes(self._encryptor.encrypt_symmetric(pt))

    def encrypt(self, slots: np.ndarray, scale: float) -> Any:
        """Encrypt a slot vector to a ciphertext object (full size when saved), for values a
        plaintext is added to before it is sent."""
        ct = sealapi.Ciphertext()
        self._encryptor.encrypt_symmetric(self.engine.encode(slots, scale), ct)
        return ct

    def decrypt(self, ct: Any) -> np.ndarray:
        """Decrypt to the complex values of all slots."""
        pt = sealapi.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return np.asarray(self.engine.encoder.decode_complex(pt), dtype=np.complex128)


class PeerKeys:
    """A peer's public CKKS context and Galois keys: encode, evaluate, rotate, re-randomise
    with the peer's public key; never decrypt."""

    def __init__(self, params: CkksParams, blobs: Mapping[str, bytes]) -> None:
        missing = {CONTEXT_BLOB, GALOIS_BLOB} - set(blobs)
        if missing:
            raise SecureProtocolError(f"public key bundle lacks {sorted(missing)}")
        try:
            ctx = ts.context_from(bytes(blobs[CONTEXT_BLOB]))
        except Exception as exc:
            raise SecureProtocolError(f"peer context does not load ({exc})") from exc
        if ctx.has_secret_key() or not ctx.is_public():
            raise SecureProtocolError("peer sent a context holding a secret key; refusing it")
        seal_ctx = ctx.seal_context().data
        key_data = seal_ctx.key_context_data()
        if (
            key_data.parms().poly_modulus_degree() != params.poly_modulus_degree
            or key_data.total_coeff_modulus_bit_count() != sum(params.coeff_mod_bit_sizes)
        ):
            raise SecureProtocolError(
                "peer's CKKS parameters differ from the agreed ones "
                f"(N={params.poly_modulus_degree}, moduli {list(params.coeff_mod_bit_sizes)})"
            )
        self.params = params
        self.context = ctx
        self.engine = HeEngine(params, seal_ctx)
        self._encryptor = sealapi.Encryptor(seal_ctx, ctx.public_key().data)
        galois = bytes(blobs[GALOIS_BLOB])
        self.galois_keys = (
            seal_io.load_galois_keys(seal_ctx, galois, "peer Galois keys") if galois else None
        )

    def __repr__(self) -> str:
        return f"PeerKeys(N={self.params.poly_modulus_degree})"

    def encrypt_zero(self, parms_id: Any) -> Any:
        """A fresh public-key encryption of zero at `parms_id`: adding it re-randomises a
        ciphertext we computed (its second component becomes uniform, so the key owner cannot
        solve it for our plaintext operands)."""
        ct = sealapi.Ciphertext()
        self._encryptor.encrypt_zero(parms_id, ct)
        return ct

    def rotate(self, ct: Any, step: int) -> Any:
        """Left-rotate all slots by `step` with the peer's keys (the step must be agreed)."""
        step %= self.params.slots
        if step == 0:
            return ct
        out = sealapi.Ciphertext()
        if self.galois_keys is None:
            raise SecureProtocolError("peer sent no Galois keys but the protocol needs rotations")
        try:
            self.engine.evaluator.rotate_vector(ct, step, self.galois_keys, out)
        except ValueError as exc:
            raise SecureProtocolError(f"peer's Galois keys lack rotation step {step}") from exc
        return out
