"""TLS material for servers and channels (mutual TLS when configured)."""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import BaseModel, Field, model_validator

from wire.peer_auth import Trust


class TlsSettings(BaseModel):
    """Paths to PEM files. All three set: mutual TLS; none set: plaintext (local only)."""

    ca_file: Path | None = Field(None, description="CA bundle that signs every peer's certificate")
    cert_file: Path | None = Field(None, description="this process's certificate")
    key_file: Path | None = Field(None, description="this process's private key")
    pins: dict[str, str] = Field(
        default_factory=dict,
        description="per peer name: 'sha256:<hex>' (that certificate only) or a PEM file of "
        "the CA(s) allowed to issue that name; required for every name when ca_file holds "
        "several CAs (wire.peer_auth)",
    )

    @model_validator(mode="after")
    def _all_or_nothing(self) -> TlsSettings:
        given = [p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None]
        if given and len(given) != 3:
            raise ValueError(
                "TLS needs ca_file, cert_file and key_file together "
                "(set all three, or none for plaintext); `make certs` creates a development set"
            )
        for path in given:
            if not path.is_file():
                raise ValueError(
                    f"TLS file {path} does not exist; run `make certs` or fix the path"
                )
        self.trust().check()
        return self

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None

    def trust(self) -> Trust:
        """Which certificates may carry which names (peer_auth.Trust)."""
        return Trust(ca_file=self.ca_file, pins=dict(self.pins))

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.ca_file and self.cert_file and self.key_file
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.ca_file.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self, server_name: str | None = None) -> grpc.ChannelCredentials:
        """Credentials for dialling `server_name`: trusting only its pinned CA, if it has one,
        else the whole bundle."""
        assert self.ca_file and self.cert_file and self.key_file
        roots = self.trust().pinned_ca(server_name) if server_name else None
        return grpc.ssl_channel_credentials(
            root_certificates=(roots or self.ca_file).read_bytes(),
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )
