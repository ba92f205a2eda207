"""Prompt sets: ShapeWorld splits, text files and JSON-lines files, and their errors."""

import json

import pytest

from genrl.prompts import PromptSetError, load_prompts


def test_text_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\na cat\n\n  a dog on a mat  \n")
    assert load_prompts(str(path)) == ["a cat", "a dog on a mat"]


def test_jsonl_reads_the_prompt_field(tmp_path):
    path = tmp_path / "train_metadata.jsonl"  # the layout of Flow-GRPO's dataset/geneval files
    rows = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
            {"tag": "counting", "prompt": "a photo of two dogs"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompts(str(path)) == ["a photo of a cat", "a photo of two dogs"]


@pytest.mark.parametrize("line, needle", [("not json", "line 2 is not JSON"), ('{"text": "a cat"}', 'line 2 has no "prompt"')])
def test_bad_jsonl_lines_are_named(tmp_path, line, needle):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat"}\n' + line + "\n")
    with pytest.raises(PromptSetError, match=needle):
        load_prompts(str(path))


def test_missing_empty_and_unknown_sources_are_named(tmp_path):
    with pytest.raises(PromptSetError, match="not found"):
        load_prompts(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(PromptSetError, match="holds no prompts"):
        load_prompts(str(empty))
    with pytest.raises(PromptSetError, match="unknown ShapeWorld split 'test'"):
        load_prompts("shapeworld:test")
    assert len(load_prompts("shapeworld:eval")) == 46
