"""Pure parts of the docker backend: moving the image's server to a loopback port."""

from __future__ import annotations

from profiler.docker import loopback_command

CMD = ["/usr/bin/python3", "-m", "bentoml", "serve", "/opt/fleet/bento"]


def test_host_and_port_of_the_image_command_are_rewritten():
    cmd = [*CMD, "--host", "0.0.0.0", "--port", "3000", "--working-dir", "/x"]
    assert loopback_command(cmd, 41234) == [
        *CMD,
        "--host=127.0.0.1",
        "--port=41234",
        "--working-dir",
        "/x",
    ]


def test_equals_form_and_port_only():
    assert loopback_command([*CMD, "--port=3000"], 5) == [*CMD, "--port=5"]


def test_a_command_without_host_or_port_is_kept():
    # empty means: run the image's own command, which reads BENTOML_PORT / PORT
    assert loopback_command(CMD, 5) == []
    assert loopback_command([], 5) == []
