import os

import pytest
import torch

# two cores: keep every test single-threaded and deterministic
torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def small_synthetic():
    from dreamrec.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(n_users=300, n_items=80, n_topics=4, seed=3))
