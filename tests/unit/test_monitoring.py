"""The Prometheus targets file, the configuration that reads it, and PromQL placeholders (no servers)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from autoscaler.sources.promql import render
from serving.cli.main import cli
from serving.monitoring import (
    GATEWAY_JOB,
    REPLICA_JOB,
    ReplicaTarget,
    scrape_config,
    target_groups,
    targets_path,
    write_targets,
)

REPLICAS = [
    ReplicaTarget("iris", "iris-predictor-00001", "iris-predictor-00001-ab3de", "127.0.0.1:40001"),
    ("iris", "iris-predictor-00002", "iris-predictor-00002-x7k2p", "http://127.0.0.1:40002", "team-a"),
]


def test_one_group_for_the_gateway_then_one_per_replica() -> None:
    assert target_groups("127.0.0.1:8080", REPLICAS) == [
        {"targets": ["127.0.0.1:8080"], "labels": {"job": GATEWAY_JOB}},
        {
            "targets": ["127.0.0.1:40001"],
            "labels": {
                "job": REPLICA_JOB,
                "namespace": "default",
                "service": "iris",
                "revision": "iris-predictor-00001",
                "replica": "iris-predictor-00001-ab3de",
            },
        },
        {
            "targets": ["127.0.0.1:40002"],  # a replica's base URL becomes host:port
            "labels": {
                "job": REPLICA_JOB,
                "namespace": "team-a",
                "service": "iris",
                "revision": "iris-predictor-00002",
                "replica": "iris-predictor-00002-x7k2p",
            },
        },
    ]


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080"),  # `servegate up --host 0.0.0.0` is scraped on loopback
        ("http://gateway.local:9000/", "gateway.local:9000"),
        ("[::]:8080", "[::1]:8080"),
        ("http://[::1]:8080", "[::1]:8080"),
    ],
)
def test_addresses_become_host_port(address: str, target: str) -> None:
    assert target_groups(address, [])[0]["targets"] == [target]


@pytest.mark.parametrize("address", ["127.0.0.1", "http://127.0.0.1", "127.0.0.1:http"])
def test_an_address_without_a_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not host:port"):
        target_groups(address, [])


def test_write_targets_writes_the_file_sd_json(tmp_path: Path) -> None:
    path = targets_path(tmp_path / "state")
    write_targets(path, "127.0.0.1:8080", REPLICAS)
    assert path == tmp_path / "state" / "prometheus" / "targets.json"
    assert json.loads(path.read_text()) == target_groups("127.0.0.1:8080", REPLICAS)
    # Readable by a Prometheus running as another user, and no temporary file left beside it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["targets.json"]


def test_write_targets_replaces_the_file_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    write_targets(path, "127.0.0.1:8080", REPLICAS)
    with path.open() as reader:  # a reader that opened the old file keeps reading all of it
        write_targets(path, "127.0.0.1:8080", [])
        assert len(json.loads(reader.read())) == 3
    assert len(json.loads(path.read_text())) == 1


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "targets.json"
    write_targets(path, "127.0.0.1:8080", REPLICAS)
    before = path.read_text()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_targets(path, "127.0.0.1:8080", [])
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["targets.json"]


def test_scrape_config_has_the_gateway_job_and_the_targets_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state with 'quotes' and \"spaces\""
    config = yaml.safe_load(scrape_config(state_dir, "0.0.0.0:8080", scrape_interval_s=1.0))

    assert config["global"]["scrape_interval"] == "1s"
    gateway, replicas = config["scrape_configs"]
    # /metrics needs the metrics token `servegate up` keeps in the state dir.
    credentials = {"credentials_file": str(state_dir / "metrics.token")}
    assert gateway == {
        "job_name": GATEWAY_JOB,
        "authorization": credentials,
        "static_configs": [{"targets": ["127.0.0.1:8080"]}],
    }
    assert replicas["job_name"] == REPLICA_JOB
    assert replicas["authorization"] == credentials
    assert replicas["file_sd_configs"] == [
        {"files": [str(targets_path(state_dir))], "refresh_interval": "1s"}
    ]
    # The gateway group of the file is dropped: the static job scrapes the gateway already.
    assert replicas["relabel_configs"] == [{"source_labels": ["job"], "regex": REPLICA_JOB, "action": "keep"}]


def test_scrape_config_names_the_targets_file_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prometheus would read a relative path from the folder of the configuration file.
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(scrape_config(Path(".servegate"), "127.0.0.1:8080"))
    assert config["scrape_configs"][1]["file_sd_configs"][0]["files"] == [
        str(tmp_path / ".servegate" / "prometheus" / "targets.json")
    ]
    assert config["global"]["scrape_interval"] == "5s"


@pytest.mark.parametrize(
    ("seconds", "duration"), [(5.0, "5s"), (1.5, "1500ms"), (0.25, "250ms"), (60, "60s")]
)
def test_scrape_intervals_are_prometheus_durations(seconds: float, duration: str) -> None:
    config = yaml.safe_load(scrape_config(Path("/state"), "127.0.0.1:8080", seconds))
    assert config["global"]["scrape_interval"] == duration


def test_a_zero_scrape_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1ms"):
        scrape_config(Path("/state"), "127.0.0.1:8080", 0.0)


def test_the_cli_prints_or_writes_the_configuration(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["prometheus-config", "--state-dir", str(tmp_path), "--gateway", "127.0.0.1:9000"]
    printed = runner.invoke(cli, [*args, "--scrape-interval", "500ms"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == scrape_config(tmp_path, "127.0.0.1:9000", 0.5)

    output = tmp_path / "prometheus.yml"
    written = runner.invoke(cli, [*args, "-o", str(output)])
    assert written.exit_code == 0, written.output
    assert output.read_text() == scrape_config(tmp_path, "127.0.0.1:9000", 5.0)
    assert "prometheus --config.file" in written.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--scrape-interval", "soon"], "is not a duration"),
        (["--scrape-interval", "0s"], "at least 1ms"),
        (["--gateway", "localhost"], "not host:port"),
    ],
)
def test_the_cli_refuses_bad_options(args: list[str], error: str) -> None:
    result = CliRunner().invoke(cli, ["prometheus-config", *args])
    assert result.exit_code == 2
    assert error in result.output


def test_render_fills_in_the_placeholders() -> None:
    expr = 'sum(rate(x{service="{{service}}", revision="{{ revision }}", namespace="{{namespace}}"}[1m]))'
    assert render(expr, revision="iris-predictor-00001", service="iris") == (
        'sum(rate(x{service="iris", revision="iris-predictor-00001", namespace="default"}[1m]))'
    )
    assert render("{{namespace}}", revision="r", service="s", namespace="team-a") == "team-a"
    assert render("up", revision="r", service="s") == "up"


def test_render_escapes_values_for_a_promql_string() -> None:
    rendered = render('x{revision="{{revision}}"}', revision='a"b\\c\nd', service="s")
    assert rendered == 'x{revision="a\\"b\\\\c\\nd"}'


def test_render_names_an_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{revison\}\}"):
        render('x{revision="{{revison}}"}', revision="r", service="s")


def test_an_https_gateway_is_scraped_over_https_with_its_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = yaml.safe_load(scrape_config(tmp_path, "https://127.0.0.1:8443", 1.0, ca_cert=ca))
    gateway, replicas = config["scrape_configs"]
    assert gateway["scheme"] == "https" and gateway["tls_config"] == {"ca_file": str(ca)}
    assert gateway["static_configs"] == [{"targets": ["127.0.0.1:8443"]}]
    assert "scheme" not in replicas  # replicas serve plain HTTP on loopback
    plain = yaml.safe_load(scrape_config(tmp_path, "127.0.0.1:8080", 1.0))["scrape_configs"][0]
    assert "scheme" not in plain and "tls_config" not in plain
