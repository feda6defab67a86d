from tunelab.validate.run import checkpoint_label


def test_checkpoint_rows_are_named_by_run_and_step(tmp_path):
    run = tmp_path / "run-on" / "checkpoints" / "step-000300"
    assert checkpoint_label(run) == "run-on/step-000300"
    assert checkpoint_label(run / "model") == "run-on/step-000300"
    assert checkpoint_label(run / "model.safetensors") == "run-on/step-000300"
    assert checkpoint_label(tmp_path / "sd_xl_base_1.0.safetensors") == "sd_xl_base_1.0.safetensors"
