"""Mapping CSV columns onto nested, typed record fields (through real files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bulkd.errors import InputError
from bulkd.mapping import plan_mapping
from bulkd.pipeline import FileResult
from bulkd.profile import Profile, load_profile
from bulkd.schemas import load_record_type

Convert = Callable[..., FileResult]
Records = Callable[..., list[dict[str, object]]]


def _csv(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_dotted_headers_nest(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    src = _csv(tmp_path, "link.customer_id,link.system_name,first_name\nc1,pos,Ann\n")
    result = convert(src, "customer_record")
    assert result.ok, result.error
    assert chunk_records(result) == [
        {"link": {"customer_id": "c1", "system_name": "pos"}, "first_name": "Ann"}
    ]


def test_empty_cells_are_omitted_never_null(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    src = _csv(tmp_path, "link.customer_id,link.system_name,first_name,date_of_birth\nc1,,,\n")
    result = convert(src, "customer_record")
    records = chunk_records(result)
    assert records == [{"link": {"customer_id": "c1"}}]
    assert "None" not in repr(records)


def test_types_emails_and_custom_fields(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    src = _csv(
        tmp_path,
        "link.email,email,employee_flag,date_of_birth,custom_fields.points\n"
        " Jane@Example.COM ,  MIXED@Case.Org,Yes,1990-02-28,0042\n"
        "bob@example.com,,0,,7\n",
    )
    result = convert(src, "customer_record")
    assert result.ok
    assert result.rejected == 0
    assert chunk_records(result) == [
        {
            "link": {"email": "jane@example.com"},
            "email": "mixed@case.org",
            "employee_flag": True,
            "date_of_birth": "1990-02-28",
            "custom_fields": {"points": "0042"},
        },
        {"link": {"email": "bob@example.com"}, "employee_flag": False, "custom_fields": {"points": "7"}},
    ]


def test_integer_number_and_datetime_fields(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    src = _csv(
        tmp_path,
        "link.email,action_at,type,purchase_id,products.quantity,products.price_paid,"
        "products.product_reference.id,products.product_reference.id_type,"
        "products.product_reference.dataset_id\n"
        "a@b.co,2023-03-06 12:26,ecommerce,p1,+3,19.50,sku1,product_id,d1\n",
    )
    result = convert(src, "purchase")
    assert result.ok, result.error
    assert result.rejected == 0
    (record,) = chunk_records(result)
    assert record["action_at"] == "2023-03-06T12:26:00Z"
    products = record["products"]
    assert isinstance(products, list)
    assert products[0]["quantity"] == 3
    assert products[0]["price_paid"] == 19.5


def test_bad_cells_are_rejected_with_field_and_rule(
    tmp_path: Path, convert: Convert, chunk_records: Records, reject_lines: Records
) -> None:
    src = _csv(
        tmp_path,
        "link.email,employee_flag,date_of_birth\n"
        "a@b.co,maybe,1990-01-01\n"
        "c@d.co,true,1990-02-31\n"
        "e@f.co,no,1990-03-01\n",
    )
    result = convert(src, "customer_record")
    assert [r["email"] if "email" in r else r["link"] for r in chunk_records(result)] == [{"email": "e@f.co"}]
    rejects = reject_lines(result)
    assert [(r["line"], r["field"], r["rule"]) for r in rejects] == [
        (2, "employee_flag", "type"),
        (3, "date_of_birth", "format"),
    ]


def test_profile_renames_constants_drop_types_and_offset(
    tmp_path: Path, convert: Convert, chunk_records: Records
) -> None:
    profile_path = tmp_path / "shop.toml"
    profile_path.write_text(
        'drop = ["internal"]\n'
        'naive_offset = "+10:00"\n'
        "[columns]\n"
        '"Customer" = "link.customer_id"\n'
        '"Points" = "custom_fields.points"\n'
        '"Seen" = "custom_fields.seen_at"\n'
        "[constants]\n"
        '"link.system_name" = "shopify"\n'
        "[types]\n"
        '"custom_fields.points" = "integer"\n'
        '"custom_fields.seen_at" = "date-time"\n'
    )
    profile = load_profile(profile_path)
    src = _csv(tmp_path, "Customer,Points,Seen,internal\nc9,12,2024-01-02 03:04,secret-x\n")
    result = convert(src, "customer_record", profile=profile)
    assert result.ok
    assert result.rejected == 0
    assert result.warnings == ()
    assert chunk_records(result) == [
        {
            "link": {"customer_id": "c9", "system_name": "shopify"},
            "custom_fields": {"points": 12, "seen_at": "2024-01-02T03:04:00+10:00"},
        }
    ]


def test_unknown_columns_are_named_in_warnings(
    tmp_path: Path, convert: Convert, chunk_records: Records
) -> None:
    src = _csv(tmp_path, "link.customer_id,shoe_size\nc1,44\n")
    result = convert(src, "customer_record")
    assert result.ok
    assert any("shoe_size" in w for w in result.warnings)
    assert chunk_records(result) == [{"link": {"customer_id": "c1"}}]


def test_a_header_with_no_field_of_the_record_type_refuses_the_file(tmp_path: Path, convert: Convert) -> None:
    """Every row would be an empty record: a wrong file, delimiter, encoding or record type."""
    result = convert(_csv(tmp_path, "email;first_name\na@b.example;Ann\n"), "customer_record")
    assert not result.ok
    assert result.error is not None
    assert "in.csv, line 1: no column is a field of customer_record" in result.error
    assert "'email;first_name'" in result.error
    assert result.chunks == ()


def test_garbage_with_a_utf16_mark_is_refused_by_name(tmp_path: Path, convert: Convert) -> None:
    """Random code units after FF FE decode to one huge header cell; the message cuts it short."""
    units = [0x4E00 + (i * 7919) % 0x5000 for i in range(3000)]  # CJK, no surrogates, no newline
    src = tmp_path / "garbage.csv"
    src.write_bytes(b"\xff\xfe" + b"".join(u.to_bytes(2, "little") for u in units))
    result = convert(src, "customer_record")
    assert not result.ok
    assert result.error is not None
    assert "garbage.csv, line 1: no column is a field of customer_record" in result.error
    assert len(result.error) < 300


def test_a_profile_constant_alone_is_enough(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    profile = Profile(constants={"link.customer_id": "c-fixed"})
    result = convert(_csv(tmp_path, "shoe_size\n44\n"), "customer_record", profile=profile)
    assert result.ok, result.error
    assert chunk_records(result) == [{"link": {"customer_id": "c-fixed"}}]


def test_long_unknown_column_names_are_cut_short_in_warnings() -> None:
    columns = ["link.customer_id", "x" * 5000]
    plan = plan_mapping("x.csv", columns, load_record_type("customer_record"), Profile())
    (warning,) = plan.warnings
    assert "x" * 40 + "..." in warning
    assert len(warning) < 120


def test_link_beside_link_email_is_refused(tmp_path: Path, convert: Convert) -> None:
    with pytest.raises(InputError, match="both a value and an object"):
        plan_mapping("x.csv", ["link", "link.email"], load_record_type("customer_record"), Profile())
    result = convert(_csv(tmp_path, "link,link.email\na,b@c.de\n"), "customer_record")
    assert not result.ok
    assert "in.csv" in (result.error or "")
    assert result.chunks == ()


def test_two_columns_to_one_field_is_refused() -> None:
    profile = Profile(columns={"E": "link.email"})
    with pytest.raises(InputError, match="same field"):
        plan_mapping("x.csv", ["E", "link.email"], load_record_type("customer_record"), profile)


def test_extra_link_key_is_rejected_by_the_validator(
    tmp_path: Path, convert: Convert, reject_lines: Records
) -> None:
    src = _csv(tmp_path, "link.email,link.customer_id\na@b.co,c1\n")
    result = convert(src, "customer_record")
    assert result.records == 0
    assert result.rejected == 1
    assert reject_lines(result)[0]["field"] == "link"
