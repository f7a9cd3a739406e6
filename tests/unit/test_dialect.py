"""The cjdroute.conf dialect: same accept/reject as the real cjdroute v20.7 (--cleanconf)."""

import json

import pytest

from support.saltenv import VECTORS, load_module

cj = load_module()
CASES = json.loads((VECTORS / "genconf/cleanconf_parse_cases.json").read_text())["cases"]
GENCONF = ["genconf-1", "genconf-2", "genconf-3", "genconf-seed"]

# Where we report each refusal (1-based, as editors count). cjdroute prints 0-based columns;
# for commas we point at the offending comma and for escapes at the backslash, where it
# points one or two characters later.
POSITIONS = {
    "trailing comma after last object member (v2)": (1, 23, "trailing comma"),
    "trailing comma in list (v2)": (1, 13, "trailing comma"),
    "missing comma between members (v2)": (1, 10, "expected ',' or '}'"),
    "single-quoted string (v2)": (1, 3, 'expected a "key" in double quotes'),
    "float value (v2)": (1, 9, "expected ',' or '}', found '.'"),
    "true/false/null literals (v2)": (1, 8, "expected a value"),
    "unicode escape in string (v2)": (1, 9, "\\xHH"),
    "escaped quote and backslash in string (v2)": (1, 10, "\\xHH"),
    "not an object at top level": (1, 1, "expected '{'"),
    "empty input": (1, 1, "found end of file"),
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["label"])
def test_parse_case_gets_the_real_parsers_verdict(case):
    if case["exit_code"] == 0:
        assert cj.cleanconf(case["input"]) == case["stdout"]
    else:
        with pytest.raises(cj.ConfigSyntaxError) as error:
            cj.parse(case["input"])
        line, column, reason = POSITIONS[case["label"]]
        assert (error.value.line, error.value.column) == (line, column)
        assert reason in error.value.reason
        assert str(error.value).startswith(f"line {line}, column {column}: expected ")


def test_every_rejected_case_has_an_expected_position():
    rejected = {c["label"] for c in CASES if c["exit_code"] != 0}
    assert rejected == set(POSITIONS)


@pytest.mark.parametrize("name", GENCONF)
def test_genconf_parses_to_exactly_what_cleanconf_printed(name):
    text = (VECTORS / f"genconf/{name}.conf").read_text()
    assert cj.cleanconf(text) == (VECTORS / f"genconf/{name}.clean.json").read_text()
    doc = cj.parse(text)
    assert doc.strict
    assert doc.data()["version"] == 2


def test_lenient_only_file_parses_but_is_marked():
    doc = cj.parse('{ "a": 1, }')
    assert not doc.strict and doc.data() == {"a": 1}
    assert "trailing comma" in doc.strict_error.reason


@pytest.mark.parametrize(
    "text, line, column, reason",
    [
        ('{\r\n "a": 1, "version": 2 }', 1, 2, "carriage return"),
        ('{ "a": 1, "version": 2 /* open', 1, 24, "'*/' to close the comment opened here, found end of file"),
        ('{ "a": "no end', 1, 8, "to close the string opened here, found end of file"),
        ('{ "a": "two\nlines", "version": 2 }', 1, 12, "cannot span lines"),
        ('{ "a": 99999999999999999999, "version": 2 }', 1, 8, "64 bits"),
        ('{ "a": -, "version": 2 }', 1, 9, "a digit after '-'"),
        ('{ "a" 1 }', 1, 7, "':' after the key"),
        ('{ "a": 1\n\n  "b": 2, "version": 2 }', 3, 3, "expected ',' or '}'"),
        ('{"a": ' + "[" * 70 + "]" * 70 + "}", 1, 72, "at most 64 levels of nesting"),
    ],
)
def test_syntax_errors_name_line_column_and_what_was_expected(text, line, column, reason):
    with pytest.raises(cj.ConfigSyntaxError) as error:
        cj.parse(text)
    assert (error.value.line, error.value.column) == (line, column), str(error.value)
    assert reason in error.value.reason


def test_escapes_round_trip_and_dumps_never_writes_json_escapes():
    value = {"quote": 'a"b\\c', "utf8": "é", "tab": "a\tb", "n": -5, "list": [1, "x"], "empty": {}}
    text = cj.dumps({**value, "version": 2})
    assert "\\u" not in text and '\\"' not in text and "\\\\" not in text
    assert cj.loads(text) == {**value, "version": 2}


@pytest.mark.parametrize("bad", [True, None, 1.5, 2**64, {1, 2}])
def test_dumps_refuses_what_cjdroute_cannot_read(bad):
    with pytest.raises(cj.ConfigError):
        cj.dumps({"a": bad})


def test_duplicate_keys_read_like_cjdns_v22_last_wins_but_editing_them_is_refused():
    text = '{ "a": 1, "a": 2, "version": 2 }'
    assert cj.loads(text) == {"a": 2, "version": 2}
    with pytest.raises(cj.ConfigError, match="'a' appears twice"):
        cj.set_path(text, ("a",), 3)


# Found by running the real cjdroute v20.7 on mutated configs (see the closing note of the
# stop that added these): each case is what the real parser did.
@pytest.mark.parametrize("prefix", ["\n", " ", "// header\n"])
def test_nothing_may_precede_the_brace_in_a_version_2_file(prefix):
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    with pytest.raises(cj.ConfigSyntaxError, match="very first character") as error:
        cj.parse(prefix + text)
    assert (error.value.line, error.value.column) == (1, 1)
    # Without a version the old reader skips to the first "{" (and we read it, but never edit it).
    assert not cj.parse(prefix + '{ "a": 1, }').strict


def test_the_first_version_key_decides_strictness():
    with pytest.raises(cj.ConfigSyntaxError, match="trailing comma"):
        cj.parse('{ "version": 2, "version": 1, "a": 1, }')


def test_cleanconf_escapes_tilde_and_places_an_added_version_like_v20_7():
    assert cj.cleanconf('{ "a": "~" }') == '{\n  "a" : "\\x7E",\n  "version" : 2\n}\n'
    assert cj.cleanconf('{ "a": 1, "x": 2, "z": 3 }') == '{\n  "a" : 1,\n  "version" : 2,\n  "x" : 2,\n  "z" : 3\n}\n'


def test_check_config_reports_duplicate_keys(tmp_path):
    path = tmp_path / "c.conf"
    text = (VECTORS / "genconf/genconf-1.conf").read_text()
    path.write_text(text.replace('"bind": "127.0.0.1:11234",', '"bind": "127.0.0.1:11234", "bind": "127.0.0.1:1",'))
    with pytest.raises(Exception, match=r"admin.bind: given 2 times \(cjdroute v20.7 uses the first, v22 the last\)"):
        cj.check_config(str(path))
