"""harness.processes: who listens on a loopback port (from /proc/net/tcp), whose processes
match a command line."""

import os
import socket
import struct

import pytest

from harness.processes import HarnessError, cmdline, listener_uid, pids_of

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


def v4(address: str, port: int) -> str:
    """An address as /proc/net/tcp shows it (the 32-bit word in the host's byte order)."""
    (word,) = struct.unpack("=I", socket.inet_aton(address))
    return f"{word:08X}:{port:04X}"


def v6(address: str, port: int) -> str:
    raw = socket.inet_pton(socket.AF_INET6, address)
    return "".join(f"{w:08X}" for w in struct.unpack("=4I", raw)) + f":{port:04X}"


def row(n: int, local: str, state: str, uid: int) -> str:
    zero = "00000000:0000" if len(local) < 20 else "0" * 32 + ":0000"
    return (
        f"   {n}: {local} {zero} {state} 00000000:00000000 00:00000000 00000000 {uid:>5}"
        "        0 2433545 1 000000008e7e8c43 100 0 0 10 0\n"
    )


def test_the_owner_of_the_loopback_listener():
    tcp = (
        HEADER + row(0, v4("127.0.0.1", 18600), "0A", 0) + row(1, v4("127.0.0.1", 18000), "0A", 999)
    )
    assert listener_uid(18600, [tcp]) == 0
    assert listener_uid(18000, [tcp]) == 999


def test_connections_and_other_ports_and_addresses_are_no_listeners():
    tcp = (
        HEADER
        + row(0, v4("127.0.0.1", 18600), "01", 1001)  # an established connection
        + row(1, v4("127.0.0.1", 18601), "0A", 1001)  # the next port
        + row(2, v4("10.0.0.5", 18600), "0A", 1001)  # not reached through 127.0.0.1
    )
    assert listener_uid(18600, [tcp]) is None


@pytest.mark.parametrize(
    "local", [v4("0.0.0.0", 18600), v6("::", 18600), v6("::ffff:127.0.0.1", 18600)]
)
def test_a_squatter_on_any_address_is_seen(local):
    table = HEADER + row(0, local, "0A", 1002)
    assert listener_uid(18600, [table]) == 1002


def test_listeners_of_two_accounts_are_an_error():
    tcp = HEADER + row(0, v4("127.0.0.1", 18600), "0A", 0)
    tcp6 = HEADER + row(0, v6("::", 18600), "0A", 1002)
    with pytest.raises(HarnessError, match="several uids"):
        listener_uid(18600, [tcp, tcp6])


def test_this_machines_tables_parse():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        assert listener_uid(server.getsockname()[1]) == os.getuid()
    finally:
        server.close()


def test_pids_of_finds_this_process_by_owner_and_command_line():
    needle = cmdline(os.getpid()).split()[0]  # this Python's path
    mine = pids_of(os.getuid(), needle)
    assert os.getpid() in mine
    assert os.getpid() not in pids_of(os.getuid() + 12345, needle)
