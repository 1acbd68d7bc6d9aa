"""A second host on this machine: a Linux network namespace joined to the root namespace by
a veth pair (root side 10.203.<k>.1, namespace side 10.203.<k>.2). Needs root, iproute2 and
iptables, as CI has. Used to cut links with real packet drops (no RST, no closed socket)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


class Namespace:
    """`with Namespace() as ns:` ... `ns.prefix + [python, ...]` runs a command inside it."""

    def __init__(self) -> None:
        k = os.getpid() % 250 + 1
        self.name = f"hnn{os.getpid()}"
        self.root_ip, self.inside_ip = f"10.203.{k}.1", f"10.203.{k}.2"
        self._veth = f"hnv{os.getpid()}"
        self._peer = f"hnp{os.getpid()}"  # our end moves into the namespace

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> Namespace:
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self._veth, "type", "veth", "peer", "name", self._peer)
            _run("ip", "link", "set", self._peer, "netns", self.name)
            _run("ip", "addr", "add", f"{self.root_ip}/30", "dev", self._veth)
            _run("ip", "link", "set", self._veth, "up")
            _run(*self.prefix, "ip", "addr", "add", f"{self.inside_ip}/30", "dev", self._peer)
            _run(*self.prefix, "ip", "link", "set", self._peer, "up")
            _run(*self.prefix, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def drop_all_but(self, tcp_ports: Sequence[int]) -> None:
        """Silently drop every packet between the namespace and the outside, except TCP to
        and from `tcp_ports` on the root side (e.g. the coordinator's port)."""
        for port in tcp_ports:
            _run(
                *self.prefix,
                "iptables",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--dport",
                str(port),
                "-j",
                "ACCEPT",
            )
            _run(
                *self.prefix,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--sport",
                str(port),
                "-j",
                "ACCEPT",
            )
        for chain in ("INPUT", "OUTPUT"):
            _run(
                *self.prefix,
                "iptables",
                "-A",
                chain,
                "!",
                "-o" if chain == "OUTPUT" else "-i",
                "lo",
                "-j",
                "DROP",
            )

    def __exit__(self, *exc: object) -> None:
        # Deleting the namespace deletes its end of the veth pair, and with it the pair.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self._veth], capture_output=True)
