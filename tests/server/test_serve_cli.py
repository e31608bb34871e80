"""Issue 17 item 3: `xmodal serve` binds loopback by default and says so; warns on 0.0.0.0 without a key."""

from __future__ import annotations

import pytest


@pytest.fixture
def started(monkeypatch):
    """Run `xmodal serve` up to the point uvicorn would start; record the app and config instead."""
    import uvicorn

    seen = {}

    def fake_run(self, *a, **kw):
        seen["host"], seen["app"] = self.config.host, self.config.app

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    return seen


@pytest.fixture
def serve(capsys):
    """`xmodal serve ARGS` through the console entry point (errors: one line, exit code 2)."""
    from xmodal.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            main(["serve", *map(str, args)])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return type("Result", (), {"exit_code": code, "output": out.out + out.err})()

    return run


def test_loopback_by_default(serve, served, started):
    r = serve(served["root"] / "idx")
    assert r.exit_code == 0, r.output
    assert started["host"] == "127.0.0.1" and "this machine only" in r.output and "warning" not in r.output
    assert "API key not required" in r.output


def test_all_interfaces_without_key_warns(serve, served, started):
    r = serve(served["root"] / "idx", "--host", "0.0.0.0")
    assert r.exit_code == 0 and "warning: serving on all interfaces without an API key" in r.output
    r = serve(served["root"] / "idx", "--host", "0.0.0.0", "--api-key", "k3y-for-tests")
    assert r.exit_code == 0 and "warning" not in r.output and "API key required" in r.output


def test_key_file_and_named_indexes(serve, served, started, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("team-key-0001\n")
    r = serve(served["root"] / "idx", "--api-key-file", keys, "--index", f"photos={served['root'] / 'idx'}",
              "--max-batch", "8", "--max-wait-ms", "1", "--cors-origin", "https://app.example")
    assert r.exit_code == 0, r.output
    assert "default=" in r.output and "photos=" in r.output and "batching up to 8 requests / 1 ms" in r.output


@pytest.mark.parametrize("args, message", [
    (["--api-key-file", "/nonexistent/keys"], "cannot read the API key file"),
    (["--api-key", "short"], "at least 8 characters"),
    (["--index", "noequals"], "--index takes NAME=DIR"),
    (["--index", "bad name=/x"], "not usable in a URL"),
])
def test_bad_options_are_one_line_exit_2(serve, served, started, args, message):
    r = serve(served["root"] / "idx", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
