"""`tunelab watch`: a live, read-only local web page over run and sweep folders, built only from the files the runs
write (status.json, TensorBoard events, samples, checkpoints, scoreboards)."""
