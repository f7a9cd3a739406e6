"""pillar.example documents every key of defaults.yaml with its default (examples are marked)."""

import yaml

from support.saltenv import REPO

DEFAULTS = yaml.safe_load((REPO / "cjdns/defaults.yaml").read_text())["cjdns"]
EXAMPLE_TEXT = (REPO / "pillar.example").read_text()
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)["cjdns"]
FREE_FORM = {"node.peers", "node.authorized_passwords", "install.source.build_env"}


def flatten(data, prefix=""):
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in FREE_FORM and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def test_every_default_is_documented_with_its_value():
    defaults, example = flatten(DEFAULTS), flatten(EXAMPLE)
    assert set(defaults) == set(example)
    differing = {k for k in defaults if defaults[k] != example[k]}
    # Only the free-form maps of peers hold example entries, each marked "# example" in the file.
    assert differing == {"node.peers", "node.authorized_passwords"}
    for endpoint in EXAMPLE["node"]["peers"]:
        line = next(l for l in EXAMPLE_TEXT.splitlines() if f'"{endpoint}":' in l)
        assert "# example" in line


def test_every_key_has_a_comment_nearby():
    lines = EXAMPLE_TEXT.splitlines()
    for path in flatten(DEFAULTS):
        leaf = path.rsplit(".", 1)[-1]
        index = next(i for i, l in enumerate(lines) if l.strip().startswith(f"{leaf}:"))
        window = lines[max(0, index - 8): index + 1]
        assert any(l.strip().startswith("#") for l in window) or "#" in lines[index], path
