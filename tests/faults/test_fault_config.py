"""Defects 4 and 6 (input errors): each is one line, exit 2, no traceback, naming the file and key. Before: too few
images for a batch was a 42-line ValueError; a diffusers folder without unet/*.safetensors was reported as storing
pickles; a missing model path or image folder named the path but not the config file and key; a `prepare` that
failed on a missing folder left an empty index behind."""

from __future__ import annotations

import shutil

from fault_setup import assert_one_line_error, copy_data, tunelab_here, write_run


def test_too_few_images_for_one_batch(tmp_path, toy_data, tiny_model_folder):
    root = copy_data(toy_data, tmp_path)
    config = str(write_run(root, tiny_model_folder, batch_size=40))  # 12 images
    code, output = tunelab_here(root, "train", config)
    assert_one_line_error(code, output, "no complete batch", "train.batch_size")


def test_diffusers_folder_without_unet_weights_says_so(tmp_path, toy_data, tiny_model_folder):
    root = copy_data(toy_data, tmp_path)
    model = shutil.copytree(tiny_model_folder, root / "model")
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    code, output = tunelab_here(root, "train", str(write_run(root, model)))
    assert_one_line_error(code, output, f"{model / 'unet'}: missing weights: no *.safetensors file")
    assert "pickle" not in output


def test_missing_model_path_names_the_config_file_and_key(tmp_path, toy_data):
    root = copy_data(toy_data, tmp_path)
    config = write_run(root, root / "no-such-model")
    for command in ("train", "cache"):
        code, output = tunelab_here(root, command, str(config))
        assert_one_line_error(code, output, f"{config}: [model] path: {root / 'no-such-model'} not found")


def test_missing_image_folder_names_the_config_file_and_key_and_leaves_no_index(tmp_path, tiny_model_folder):
    config = write_run(tmp_path, tiny_model_folder)  # its [data] source is images/, which does not exist
    code, output = tunelab_here(tmp_path, "prepare", str(config))
    assert_one_line_error(code, output, f"{config}: [data] sources[0].path: image folder {tmp_path / 'images'} "
                                        "not found")
    assert not (tmp_path / "index.sqlite").exists()
