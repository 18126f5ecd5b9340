"""Running a loaded model: the Classifier, the CPU/GPU runtime fast paths, attention maps."""
