"""Loading mapping profiles: every problem names the profile key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkd.errors import ProfileError
from bulkd.profile import Profile, load_profile


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_full_profile_loads(tmp_path: Path) -> None:
    profile = load_profile(
        _profile(
            tmp_path,
            'drop = ["x"]\nlist_separator = "|"\nnaive_offset = "-05:30"\n'
            '[columns]\n"E" = "link.email"\n[constants]\n"link.system_name" = "pos"\n'
            '[types]\n"custom_fields.n" = "number"\n',
        )
    )
    assert profile.name == "p"
    assert profile.target("E") == "link.email"
    assert profile.target("x") is None
    assert profile.target(" first_name ") == "first_name"
    assert profile.constants == {"link.system_name": "pos"}
    assert profile.types == {"custom_fields.n": "number"}
    assert profile.list_separator == "|"
    assert profile.naive_offset == "-05:30"


def test_default_profile_maps_headers_to_themselves() -> None:
    assert Profile().target("link.email") == "link.email"
    assert Profile().naive_offset == "Z"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colums = {}\n", "colums"),
        ('[columns]\n"E" = "link..email"\n', "columns.E"),
        ('[types]\n"custom_fields.n" = "decimal"\n', "types.custom_fields.n"),
        ('naive_offset = "+1000"\n', "naive_offset"),
        ('drop = "x"\n', "drop"),
        ('list_separator = ""\n', "list_separator"),
        ('[constants]\n"a" = [1]\n', "constants.a"),
        ("not toml = = =\n", "<file>"),
    ],
)
def test_bad_profiles_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(_profile(tmp_path, text))
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.toml")
