from zsc import protogen


def test_committed_stubs_match_protos() -> None:
    assert protogen.drifted() == [], "run `make protos` and commit the regenerated stubs"


def test_every_proto_uses_versioned_package_and_unspecified_enum_zero() -> None:
    for path in protogen.proto_files():
        text = path.read_text()
        area = path.parent.parent.name
        assert f"package zsc.{area}.v1;" in text, path
        for line in text.splitlines():
            if line.strip().startswith("enum "):
                body = text[text.index(line) :]
                first_value = next(v for v in body.splitlines()[1:] if "=" in v)
                assert "UNSPECIFIED = 0" in first_value, f"{path}: {line.strip()} must start with *_UNSPECIFIED = 0"
