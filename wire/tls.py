"""TLS material for servers and channels (mutual TLS when configured)."""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import BaseModel, Field, model_validator


class TlsSettings(BaseModel):
    """Paths to PEM files. All three set: mutual TLS; none set: plaintext (local only)."""

    ca_file: Path | None = Field(None, description="CA bundle that signs every peer's certificate")
    cert_file: Path | None = Field(None, description="this process's certificate")
    key_file: Path | None = Field(None, description="this process's private key")

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
        return self

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.ca_file and self.cert_file and self.key_file
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.ca_file.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.ca_file and self.cert_file and self.key_file
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )
