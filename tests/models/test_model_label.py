from tunelab.models.io import model_label


def test_model_labels_name_runs_steps_files_and_folders(tmp_path):
    run = tmp_path / "run-on" / "checkpoints" / "step-000300"
    assert model_label(run) == "run-on/step-000300"
    assert model_label(run / "model") == "run-on/step-000300"
    assert model_label(run / "model.safetensors") == "run-on/step-000300"
    assert model_label(tmp_path / "sd_xl_base_1.0.safetensors") == "sd_xl_base_1.0"  # A1111 shows the stem
    assert model_label(tmp_path / "my-finetune") == "my-finetune"
