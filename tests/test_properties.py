"""serving.properties read like Java's Properties, with OPTION_* env filling only what the file leaves out."""

from lmikit.project.properties import init_properties, parse_properties, with_option_environment

TEXT = """# comment
! also a comment
engine=Python
option.model_id : /models/x
option.entryPoint   model.py
option.stop = a\\=b
option.long=first \\
    second
option.trailing=kept   
"""


def test_java_properties_syntax():
    assert parse_properties(TEXT) == {
        "engine": "Python",
        "option.model_id": "/models/x",
        "option.entryPoint": "model.py",
        "option.stop": "a=b",
        "option.long": "first second",
        "option.trailing": "kept   ",
    }


def test_option_env_fills_gaps_but_the_file_wins():
    env = {"OPTION_DTYPE": "fp32", "OPTION_MAX_ROLLING_BATCH_SIZE": "4", "HOME": "/x"}
    serving = parse_properties("option.dtype=fp16\n")
    assert with_option_environment(serving, env) == {"option.dtype": "fp16", "option.max_rolling_batch_size": "4"}


def test_init_properties_strip_option_and_add_djl_keys(tmp_path):
    props = init_properties({"engine": "Python", "option.rolling_batch": "auto"}, tmp_path)
    assert props == {
        "engine": "Python",
        "rolling_batch": "auto",
        "handler": "handle",
        "device_id": "-1",
        "model_dir": str(tmp_path.resolve()),
    }
