"""vision_rwkv.engine: the training/eval pieces shared by the classification, CLIP and segmentation tools.

Public API (import from ``vision_rwkv.engine``):

Config (``config.py``)
    load_config(path, overrides=None, schema=None) -> DictConfig
        merges schema defaults (a dataclass, optional) -> every file of the YAML's ``_base_`` chain (str or list,
        relative to the file; bases first) -> overrides. With a schema every file may set any schema key; without
        one the root files (no ``_base_``) define the keys. A key not defined is a ConfigError naming the key and
        the file (a wrongly typed value too); ``key=value`` / ``+new.key=value`` / ``~key`` overrides; nodes
        named ``*kwargs`` are free-form. ``${...}`` interpolations are resolved. ``path=None``: schema defaults.
    config_layers(path) -> [(file, keys, is_root)], apply_overrides(cfg, overrides), merge_strict(base, update),
    save_config(cfg, path), to_dict(node), ConfigError

Distributed (``distributed.py``) -- single process and torchrun share one code path
    init_distributed(device="auto", backend=None) -> DistInfo(rank, world_size, local_rank, device)
        (``.distributed``, ``.is_main``); gloo on CPU, nccl on CUDA.
    cleanup_distributed(), wrap_ddp(model, info), unwrap_model(model), convert_sync_batchnorm(model, info)
    get_rank(), get_world_size(), is_main_process(), barrier(), print_rank0(...), launch_rank() (torchrun's RANK,
    also before / after the process group)
    all_reduce_sum(t), all_reduce_max(t), all_reduce_mean(t), reduce_dict(d), all_gather_object(obj),
    broadcast_object(obj)

Precision (``precision.py``)
    autocast(precision, device) -> context ("fp32" no-op | "bf16" | "fp16"), make_grad_scaler(precision, device)
    (enabled for fp16 only), check_precision(name), precision_dtype(name)

Data loading (``loader.py``) -- deterministic and resumable
    EpochLoader(dataset, batch_size, shuffle=True, drop_last=True, seed=0, num_workers=0, collate_fn=None,
                info=None, seeded=True)
        ``iter_epoch(epoch, start_batch=0)`` yields (batch_index, batch); per-process batch size; rank r gets
        DistributedSampler's shard; random augmentation is seeded per (seed, epoch, index); samples returned as
        ``None`` (unreadable) are dropped and counted in ``num_skipped``; a batch of nothing but those is replaced
        by the process's previous batch (every process takes every step).
        ``repeats=3`` is timm's repeated augmentation (``RepeatAugSampler``), each copy augmented anew.
    build_train_loader(keys, dataset, batch_size, **kw) (an EpochLoader whose size errors are ConfigErrors naming
    ``keys``), ResumableSampler, ShardSampler (eval shards without padding), SeededSamples, seeded_rng(seed),
    sample_seed(seed, epoch, index, copy=0), collate_drop_none(batch), seed_everything(seed, rank=0,
    deterministic=False)

Checkpoints (``checkpoint.py``)
    atomic_save(obj, path) (temp file in the same folder + os.replace), load_checkpoint(path) (weights_only=True),
    CheckpointManager(run_dir, keep_last=3, mode="max") (``save(state, step, metric)``, ``latest()``,
    ``resolve("latest" | path | None)``, ``best_path``), find_latest_checkpoint(dir),
    capture_rng_state() / restore_rng_state(s), gather_rng_states() / restore_rank_rng(states),
    load_model_weights(model, path, key="auto") (training checkpoint -> EMA or model weights; .pt or .safetensors);
    read_model_state(path, key="auto") (the same state dict, not loaded);
    check_run_dir_is_free(run_dir, resume) (a fresh run refuses a folder holding another run's checkpoints)

Logging (``logger.py``)
    MetricLogger(run_dir, tensorboard=False): ``log(step, metrics, split)`` -> ``<split>_metrics.csv`` (+ TB),
    ``plot()`` -> ``curves.png``, ``truncate_after(step)``; progress(iterable, total, desc) (tqdm on rank 0);
    plot_curves(series, path); read_metrics_csv(path)

Training loop (``loop.py``)
    Trainer(model, optimizer, train_loader: EpochLoader, loss_fn, *, run_dir, info=None, epochs=None,
            max_steps=None, scheduler=None, ema=None, precision="fp32", grad_accum_steps=1, clip_grad=None,
            clip_mode="norm", eval_fn=None, eval_every_epochs=1, eval_every_steps=None, best_metric=None,
            best_mode="max", ckpt_every_steps=None, ckpt_every_epochs=1, keep_last=3, log_every=10,
            tensorboard=False, after_step=None, stop_after_steps=None, show_progress=True, extra_state=None,
            summed_extra=(), plot=True, stop_on_signals=True, result_files=())
        ``fit(resume=None | "latest" | path) -> dict`` (step, epoch, train_loss, train_time_s, last eval metrics,
        best) and, with ``plot``, draws ``curves.png``; ``train_step(micro_batches)``; ``evaluate()``;
        ``state_dict()`` / ``load_state_dict()``; ``save()``. Evaluation / checkpoints run when the step schedule,
        the epoch schedule (at an epoch end) or the end of training asks, each at most once per step.
        ``loss_fn(model, batch) -> loss | (loss, {name: float})`` runs under autocast with the batch on the
        device; ``eval_fn(model) -> {name: float}`` runs on every rank (reduce inside it); EMA metrics get an
        ``ema_`` prefix; ``after_step(trainer)`` runs after each optimizer step. ``extra_state`` (a dict) is
        saved with each checkpoint; on resume the values it gives describe the new run and win over the saved ones
        (a change warns), other saved keys are restored; its ``summed_extra`` keys are per-rank counters, saved as
        their sum over ranks and restored on rank 0 (0 on the others). An evaluation that raises is followed by a
        checkpoint of its step (single process), then the error propagates. SIGTERM / SIGINT / SIGUSR1 during
        ``fit`` end it after the step in progress, checkpointed; its result then has ``stopped_by`` and
        ``exit_status`` (128 + the signal's number), and a resume makes the evaluation that step was due first.
    move_to_device(obj, device), clip_gradients(params, max_norm, mode)

Stop signals (``stopping.py``, not imported here: ``from vision_rwkv.engine.stopping import ...``)
    StopSignals() (context: records the first stop signal instead of dying of it; Ctrl-C twice raises
    KeyboardInterrupt), STOP_SIGNALS, ignore_stop_signals(worker_id) (every DataLoader's ``worker_init_fn``),
    hold_after_stop() (the tools: stop signals stay ignored after a stop), stop_exit_status(signum),
    signal_name(signum)

Memory format (``memory_format.py``)
    to_channels_last(model) (4-D weights and image inputs channels-last: timm's ``--channels-last``, config key
    ``train.channels_last``), takes_channels_last(model), plain_layout(state) (checkpoint weights stay contiguous)

Process state (``process_state.py``)
    process_state_restored() (context manager and decorator: torch's thread count, the python / numpy / torch random
    states and the determinism settings come back after the block; every training and evaluation entry point)

Compilation (``compiling.py``)
    compile_for_training(model, enabled, backend="inductor", mode=None, where="train") -> the model or
    ``torch.compile(model, ...)`` (config keys ``train.compile`` / ``train.compile_backend`` / ``train.compile_mode``
    of every training tool; unknown backends / modes are a ValueError naming the key; the compile-cache key carries
    ``compiling.ops_cache_tag()``, a hash of the operator sources, as from ``import vision_rwkv``), COMPILE_MODES

Command line (``cli.py``, not imported here: ``from vision_rwkv.engine.cli import ...``)
    config_arg_parser(description, config_help, config_required=True, resume=False, checkpoint=None) and
    parse_config_args(parser, argv, option_keys={"resume": "train.resume"}) -> ConfigArgs(config, overrides,
    options): the form every config-driven tool takes, ``CONFIG [key=value ...] [--resume latest|PATH]
    [--checkpoint PATH]`` (``--config CONFIG`` alias; options that stand for a config key become overrides).

Classification (``classification.py``, not imported here: ``from vision_rwkv.engine.classification import ...``)
    train_classifier(cfg) -> dict: top1/top5/loss (validation, last eval; ema_* with EMA), train_loss, step, epoch,
        train_time_s, total_time_s, best {metric, value, step}, run_dir, checkpoint, classes, num_classes.
    evaluate_classifier(cfg) -> dict: top1, top5, loss, per_class_accuracy, per_class_count, confusion_matrix,
        throughput (images/s of the forward), num_samples, skipped_samples, input_size, confusion_matrix_png.
    cfg = load_config("configs/classification/<name>.yaml", overrides); every key is defined in base.yaml.

Prediction (``predict.py``, not imported here: ``from vision_rwkv.engine.predict import ...``)
    load_classifier(model, checkpoint=None, overrides=(), num_classes=None, class_names=None) -> Classifier(model,
        classes, transform, input_size) from a classification config + checkpoint or a timm model name;
    image_files(paths), predict_files(clf, files, topk=5, ...) -> rows (``topk`` or ``error`` per file),
    write_predictions(rows, path) (CSV / JSON), plot_predictions(rows, path) (PNG grid), is_segmentation_config(path)

Exact resume needs the same world size and per-process batch size; RNG streams are per rank.
"""
from .checkpoint import (CheckpointManager, atomic_save, capture_rng_state, check_run_dir_is_free,
                         find_latest_checkpoint, gather_rng_states, load_checkpoint, load_model_weights,
                         read_model_state, restore_rank_rng, restore_rng_state)
from .compiling import COMPILE_MODES, compile_for_training
from .config import ConfigError, apply_overrides, config_layers, load_config, merge_strict, save_config, to_dict
from .distributed import (DistInfo, all_gather_object, all_reduce_max, all_reduce_mean, all_reduce_sum, barrier,
                          broadcast_object,
                          cleanup_distributed, convert_sync_batchnorm, get_rank, get_world_size, init_distributed,
                          is_main_process, launch_rank, print_rank0, reduce_dict, unwrap_model, wrap_ddp)
from .loader import (EpochLoader, ResumableSampler, SeededSamples, ShardSampler, build_train_loader, collate_drop_none,
                     sample_seed, seed_everything, seeded_rng)
from .logger import MetricLogger, json_text, plot_curves, progress, read_metrics_csv
from .loop import Trainer, clip_gradients, move_to_device
from .memory_format import plain_layout, takes_channels_last, to_channels_last
from .process_state import process_state_restored
from .precision import autocast, check_precision, make_grad_scaler, precision_dtype
