"""scripts/postgres.sh runs as root but its data directory is the postgres account's: root
never opens a path there for writing, nor changes one's owner or mode (a link planted by
postgres would take it anywhere); postgres writes its own files (tested for real by
tests/e2e/test_postgres.py)."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
# A redirection into $PG_DATA, or chown/chmod/cp/mv/tee/install of a path in it.
ROOT_WRITE = re.compile(
    r""">>?\s*"?\$\{?PG_DATA\b|\b(chown|chmod|cp|tee|install|ln|truncate)\b[^\n]*\$\{?PG_DATA/"""
)


def test_root_never_writes_in_the_postgres_accounts_directory():
    offending = [
        line.strip()
        for line in SCRIPT.read_text().splitlines()
        if ROOT_WRITE.search(line) and "as_postgres" not in line
    ]
    assert offending == [], offending


def test_files_in_the_data_directory_are_replaced_by_postgres_not_written_through():
    text = SCRIPT.read_text()
    assert re.search(r'as_postgres sh -c .umask 077; new=\$\(mktemp "\$1/', text)
    assert 'mv -fT -- "$new" "$1/$2"' in text  # a rename: a link there is replaced
    for name in ("slurm-gateway.conf", "pg_hba.conf"):
        assert f"write_as_postgres {name}" in text, name
