"""Prompt templates: open_clip's OpenAI set, the shipped "simple" set, user template files."""

import pytest
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from vlbridge.errors import BadInputError, UserError
from vlbridge.evaluation.templates import builtin_template_names, fill_template, load_templates


def test_openai_set_is_open_clips_80_templates_in_order():
    templates = load_templates("openai")
    assert len(templates) == 80
    for template, make in zip(templates, OPENAI_IMAGENET_TEMPLATES):
        assert fill_template(template, "red circle") == make("red circle")


def test_simple_set_is_shipped_and_named():
    assert load_templates("simple") == ["a photo of a {}."]
    assert {"simple", "openai"} <= set(builtin_template_names())


def test_user_file_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n\na drawing of a {}.\n  {} on white  \n", encoding="utf-8")
    assert load_templates(str(path)) == ["a drawing of a {}.", "{} on white"]


def test_fill_template_replaces_every_placeholder_and_keeps_other_braces():
    assert fill_template("a {} next to another {} {x}", "cat") == "a cat next to another cat {x}"


def test_template_line_without_placeholder_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a photo of a {}.\na photo\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="line 2"):
        load_templates(str(path))


def test_empty_template_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="no templates"):
        load_templates(str(path))


def test_unknown_name_lists_the_choices():
    with pytest.raises(UserError, match="openai") as err:
        load_templates("no-such-set")
    assert "simple" in str(err.value)


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("une photo d'un {} \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(BadInputError, match="UTF-8"):
        load_templates(str(path))


def test_per_dataset_templates_use_a_shipped_set_or_simple():
    from vlbridge.evaluation.templates import load_templates, templates_for

    assert templates_for("dataset", "shapes") == ("shapes", load_templates("shapes"))
    assert templates_for("dataset", "shapes-shift:blur")[0] == templates_for("dataset", "shapes?shift=blur&n=5")[0] == "shapes"
    assert templates_for("dataset", "fashion-mnist") == ("simple", ["a photo of a {}."])
    assert templates_for("dataset", "imagefolder:/data/x")[0] == "simple"
    assert templates_for("openai", "shapes")[0] == "openai" and len(templates_for("openai", "shapes")[1]) == 80
