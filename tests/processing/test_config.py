"""config.toml validation (SPEC §2): every problem with its key path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from processing.config import Config, ConfigError
from tests.conftest import eams, make_config, password_hash, write_csv

ROOT = Path(__file__).resolve().parents[2]


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(path)
    return caught.value.problems


DISTRICT = f"""
[districts.springfield]
name = "Springfield"
username = "springfield"
password_hash = "{password_hash()}"

[districts.springfield.order]
id = "ENT-1"
licenses = 10

[[districts.springfield.schools]]
code = "0101"
name = "Lincoln"
"""


def test_the_bundled_demo_config_is_valid() -> None:
    config = Config.from_toml(ROOT / "config.toml")
    demo = config.district("demo")
    assert demo.order.licenses == 1000 and len(demo.regular_orders) == 1
    assert [s.code for s in demo.schools] == ["0101", "0102", "0201"]
    assert demo.password_hash and demo.password_hash.startswith("scrypt$")


def test_every_problem_is_listed_with_its_key_path_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
[server]
port = 70000
max_upload_mb = 0

[districts.Bad_Id]
name = ""
username = "bad id"
password = "plain"
schedule = "sometimes"
deactivation_guard = 2
grades = ["13"]

[districts.Bad_Id.order]
id = "E"
licenses = -5

[[districts.Bad_Id.schools]]
code = 101
name = "Lincoln"
""",
    )
    expected = [
        "server.port: must be between 0 and 65535",
        "server.max_upload_mb: must be >= 1",
        "districts.Bad_Id: district id must match [a-z0-9][a-z0-9-]*",
        "districts.Bad_Id.password: plain-text passwords are not accepted",
        "districts.Bad_Id.name: required",
        "districts.Bad_Id.username: required",
        "districts.Bad_Id.schedule: must be",
        "districts.Bad_Id.deactivation_guard: must be a number between 0 and 1",
        "districts.Bad_Id.grades[0]: '13' is not K or 1-12",
        "districts.Bad_Id.order.licenses: must be >= 0",
        "districts.Bad_Id.schools[0].code: required: a string",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_usernames_must_be_unique_across_districts(tmp_path: Path) -> None:
    other = DISTRICT.replace("districts.springfield", "districts.shelby").replace(
        'id = "ENT-1"', 'id = "ENT-2"'
    )
    problems = problems_of(tmp_path, DISTRICT + other)
    assert any(p.startswith("districts.shelby.username:") and "springfield" in p for p in problems)


def test_a_district_needs_a_way_to_log_in(tmp_path: Path) -> None:
    text = DISTRICT.replace(f'password_hash = "{password_hash()}"\n', "")
    assert "districts.springfield: needs password_hash or authorized_keys to log in" in (
        problems_of(tmp_path, text)
    )


def test_not_toml_is_one_clear_problem(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[server\nport = 22")
    assert len(problems) == 1 and "not valid TOML" in problems[0]


def test_check_config_exit_codes_and_output(tmp_path: Path) -> None:
    good = make_config(tmp_path)
    code, out, err = eams("check-config", config=good)
    assert code == 0 and "OK" in out and err == ""

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -1\nlogin_attempts = 0\n", encoding="utf-8")
    code, _, err = eams("check-config", config=bad)
    assert code == 2
    assert "server.port: must be between 0 and 65535" in err
    assert "server.login_attempts: must be >= 1" in err  # both, not just the first


def test_check_config_warns_when_licenses_fall_below_use(tmp_path: Path) -> None:
    config = make_config(tmp_path, licenses=5)
    rows = [
        ["0101", f"S{i}", "Ana", "Lee", "3", f"user{i}", f"pw-{i}-xx", "", "A"] for i in range(4)
    ]
    upload = write_csv(tmp_path / "students.csv", rows)
    assert eams("process", "--district", "springfield", str(upload), config=config)[0] == 0
    make_config(tmp_path, licenses=2)  # the operator lowers the order
    code, out, err = eams("check-config", config=config)
    assert code == 0 and "OK" in out
    assert "order ENT-SPR-2026 has 2 licenses but 4 are in use" in err


def test_the_limits_of_spec_3_2_are_settings_with_defaults(tmp_path: Path) -> None:
    config = Config.from_toml(make_config(tmp_path))
    server = config.server
    assert (
        server.max_unauthenticated,
        server.max_unauthenticated_per_address,
        server.max_sessions_per_district,
        server.max_handles_per_session,
        server.temp_files_per_district,
        server.log_format,
    ) == (64, 10, 8, 32, 10, "text")


def test_limits_below_one_and_an_unknown_log_format_are_refused(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        "[server]\nmax_sessions_per_district = 0\ntemp_files_per_district = -1\n"
        'log_format = "xml"\n' + DISTRICT,
    )
    assert "server.max_sessions_per_district: must be >= 1" in problems
    assert "server.temp_files_per_district: must be >= 1" in problems
    assert 'server.log_format: must be "text" or "json"' in problems


def test_an_operators_sender_is_refused_with_where_the_sender_is_set(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, '[server]\n[operators]\nsender = "eams@example.org"\n' + DISTRICT
    )
    assert problems == ["operators.sender: not a setting: set the From address as [smtp] sender"]


def test_web_and_operator_accounts_are_read_with_defaults(tmp_path: Path) -> None:
    text = (
        f'[server]\n[web]\nport = 0\n[operators.accounts.jdoe]\nname = "Jane Doe"\n'
        f'password_hash = "{password_hash()}"\n' + DISTRICT
    )
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    config = Config.from_toml(path)
    assert config.web is not None
    assert (config.web.listen, config.web.port, config.web.session_minutes) == ("127.0.0.1", 0, 480)
    assert config.web.metrics_allow == ("127.0.0.0/8", "::1/128") and not config.web.tls
    assert config.operators["jdoe"].display_name == "Jane Doe"
    assert config.district("springfield").web_login is True


def test_web_and_account_problems_have_their_key_paths(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[server]\n[web]\nport = 70000\ntls_cert = "c.pem"\nmetrics_allow = ["nope"]\n'
        '[operators.accounts.springfield]\npassword_hash = "scrypt$abc$x$y$zz$qq"\n'
        '[operators.accounts.ops]\nname = "Ops"\n' + DISTRICT,
    )
    assert "web.port: must be between 0 and 65535 (0 = off)" in problems
    assert "web.tls_cert: tls_cert and tls_key go together: set both or neither" in problems
    assert "web.metrics_allow[0]: 'nope' is not a network (10.0.0.0/8)" in problems
    assert any(p.startswith("operators.accounts.springfield.password_hash: ") for p in problems)
    assert "operators.accounts.ops.password_hash: required: a value from `eams hash-password`" in (
        problems
    )


def test_an_operator_named_like_a_district_login_is_refused(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        f'[server]\n[operators.accounts.SpringField]\npassword_hash = "{password_hash()}"\n'
        + DISTRICT,
    )
    assert problems == [
        "operators.accounts.SpringField: the name is district springfield's SFTP username: "
        "an operator and a district must sign in with different names"
    ]


def test_the_bundled_demo_has_the_web_console_and_the_readme_logins() -> None:
    from server.accounts import verify_password

    config = Config.from_toml(ROOT / "config.toml")
    assert config.web is not None and (config.web.listen, config.web.port) == ("127.0.0.1", 8080)
    assert verify_password(config.operators["ops"].password_hash, "demo-ops-2026")
    demo = config.district("demo")
    assert demo.web_login and verify_password(demo.password_hash or "", "demo-sftp-2026")
