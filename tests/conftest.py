import os
import textwrap

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    """The real bundled all-MiniLM-L6-v2 encoder, loaded once (it needs ``transformers``, which the
    torch-only core imports only to encode)."""
    pytest.importorskip("transformers", reason="the sentence encoder runs on transformers")
    from listwise_ranking.relevance import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def lavis_output_dir(tmp_path):
    """LAVIS's registry path ``output_dir`` pointed at ``tmp_path`` (LAVIS's _report_metrics appends to
    output_dir/evaluate.txt), restored afterwards."""
    from lavis.common.registry import registry

    saved = registry.mapping["paths"].get("output_dir")
    registry.mapping["paths"]["output_dir"] = str(tmp_path)
    yield tmp_path
    if saved is None:
        registry.mapping["paths"].pop("output_dir")
    else:
        registry.mapping["paths"]["output_dir"] = saved


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny COCO-format retrieval dataset of real JPEG files: 16 train, 8 val, 8 test images."""
    from lavis_listwise.demo.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "synthetic", n_train=16, n_val=8, n_test=8, image_size=32, seed=0
    )


def dataset_yaml(root, builder="retrieval_listwise_json"):
    """The ``datasets:`` entry (indented) for a COCO-format dataset at ``root``, at 32 px."""
    return textwrap.indent(
        textwrap.dedent(
            f"""
            {builder}:
              vis_processor:
                train: {{name: blip_image_train, image_size: 32}}
                eval: {{name: blip_image_eval, image_size: 32}}
              text_processor:
                train: {{name: blip_caption}}
                eval: {{name: blip_caption}}
              build_info:
                annotations:
                  train: {{storage: {root}/annotations/train.json}}
                  val: {{storage: {root}/annotations/val.json}}
                  test: {{storage: {root}/annotations/test.json}}
                images: {{storage: {root}}}
            """
        ).strip("\n"),
        "  ",
    )


def write_run_yaml(path, data_root, output_dir, cache_dir, arch="blip_retrieval_listwise", weight=1.0):
    """A YAML-only LAVIS run on ``data_root`` with a tiny model, on CPU."""
    head = textwrap.dedent(
        f"""
        model:
          arch: {arch}
          model_type: tiny
          listwise:
            weight: {weight}
            relevance:
              cache_dir: {cache_dir}
        datasets:
        """
    )
    run = textwrap.dedent(
        f"""
        run:
          task: retrieval_listwise
          runner: runner_listwise
          lr_sched: linear_warmup_cosine_lr
          init_lr: 1e-3
          min_lr: 0
          weight_decay: 0.05
          max_epoch: 1
          num_workers: 0
          batch_size_train: 8
          batch_size_eval: 8
          train_splits: [train]
          valid_splits: [val]
          test_splits: [test]
          device: cpu
          world_size: 1
          dist_url: env://
          distributed: False
          use_dist_eval_sampler: False
          k_test: 4
          seed: 42
          output_dir: {output_dir}
          amp: False
          resume_ckpt_path: null
          evaluate: False
        """
    )
    path.write_text(head + dataset_yaml(data_root) + "\n" + run)
    return path


@pytest.fixture(scope="module")
def one_process_group():
    """A one-process gloo group for the module, as the plugin's runner starts one (LAVIS's
    ``Blip2Qformer.forward`` calls ``dist.get_rank()``; BLIP's ``negative_all_rank`` gathers); a group
    that already exists is left alone."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
