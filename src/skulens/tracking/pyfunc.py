"""MLflow pyfunc wrappers, so a registered version can be loaded and called with MLflow alone."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a ``text`` column and/or an ``image_path`` column; output: vectors."""

    def load_context(self, context) -> None:  # noqa: ANN001
        from skulens.models.two_tower import TwoTower

        bundle = Path(context.artifacts["bundle"])
        self.tower = TwoTower.load(bundle, cache_dir=bundle / ".cache")

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        if "image_path" in model_input:
            return self.tower.encode_images(list(model_input["image_path"])).tolist()
        return self.tower.encode_texts(list(model_input["text"])).tolist()


class RerankerModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with ``query`` and ``title`` columns; output: one relevance logit per row."""

    def load_context(self, context) -> None:  # noqa: ANN001
        from skulens.models.reranker import CrossEncoderReranker

        self.reranker = CrossEncoderReranker(context.artifacts["model"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.reranker.score(list(model_input["query"]), list(model_input["title"])).tolist()


class TextEncoderModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a ``text`` column; output: one normalised vector per row."""

    def load_context(self, context) -> None:  # noqa: ANN001
        from skulens.retrieval.encoders import make_encoder

        self.encoder = make_encoder("minilm", path=context.artifacts["model"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.encoder.encode_texts(list(model_input["text"])).tolist()


class RankerModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame of the ranker's feature columns (skulens.models.ranker.FEATURES); output:
    one score per row (higher ranks first)."""

    def load_context(self, context) -> None:  # noqa: ANN001
        from skulens.models.ranker import LearnedRanker

        self.ranker = LearnedRanker.load(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from skulens.models.ranker import FEATURES

        return self.ranker.score(model_input[list(FEATURES)].to_numpy(dtype="float64")).tolist()
