"""The identity editor: the unedited model, the row every comparison starts from."""

from msafety_bench.editing import Editor, EditorConfig, NullEdit


class NoEditor(Editor):
    name = "none"

    def fit(self, loaded, calibration, config: EditorConfig, context) -> NullEdit:
        return NullEdit("none", config, "none")  # nothing to fit or cache
