"""`comining train`: train a co-mining detector (or a baseline) and mine at every checkpoint."""

from __future__ import annotations

import argparse

from comining.config import AUGMENTS_HELP, BACKBONES, DETECTORS, METHODS


from comining.cli.options import add_review_mining_args, review_mining_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a co-mining detector; mine the training set at every checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one torchvision RetinaNet or FCOS as a Siamese pair (the image and a "
                    "colour-augmented copy); each view's confident detections that match no "
                    "annotation supervise the other view. At every checkpoint both views mine "
                    "the training set into RUN_DIR/comining.sqlite for review.",
        epilog="methods:\n"
               "  comining   each view learns from annotations + the other view's pseudo boxes\n"
               "  original   the original view, annotations only (the usual detector)\n"
               "  augmented  the augmented view, annotations only\n"
               "  joint      both views, annotations only\n"
               "  self       the original view, annotations + its own pseudo boxes\n"
               "\nschedule: SGD (momentum 0.9, weight decay 1e-4), lr 0.01 x batch/16, linear "
               "warm-up,\nx0.1 at 2/3 and 8/9 of --iters (the paper's 60k/80k of 90k).\n"
               "Multi-GPU: torchrun --nproc_per_node N -m comining train --run-dir RUN_DIR ...")
    p.add_argument("--images", required=True, metavar="DIR", help="image root of the annotation file")
    p.add_argument("--ann", required=True, metavar="SPARSE.json", help="COCO detection json (sparse labels)")
    p.add_argument("--run", "--run-dir", dest="run", required=True, metavar="RUN_DIR",
                   help="output folder of the run (under torchrun, spell it --run-dir: torchrun's "
                        "own parser mistakes --run for its --run-path)")
    p.add_argument("--detector", choices=DETECTORS, default="retinanet")
    p.add_argument("--backbone", choices=BACKBONES, default="resnet50",
                   help="resnet50 is the paper's; mobilenet_v3 with --fpn-channels 64 suits CPUs")
    p.add_argument("--fpn-channels", type=int, default=256, metavar="C",
                   help="FPN and head width (default 256, torchvision's)")
    p.add_argument("--method", choices=METHODS, default="comining")
    p.add_argument("--augment", choices=("color", "blur", "color+blur"), default="color",
                   help=AUGMENTS_HELP)
    p.add_argument("--iters", type=int, default=90_000, metavar="N")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="original images per step")
    p.add_argument("--image-size", type=int, default=800, metavar="PX",
                   help="longer image side; images are padded to PX x PX (default 800)")
    p.add_argument("--checkpoint-every", type=int, default=5000, metavar="K")
    p.add_argument("--weights-backbone", default="imagenet", metavar="imagenet|none|PATH",
                   help="ImageNet weights (downloaded by torchvision), none, or a local file")
    p.add_argument("--init", metavar="PATH|NAME",
                   help="start from a detector: a file (ours, or a torchvision COCO state dict), or "
                        "torchvision's COCO weights by name: RetinaNet_ResNet50_FPN_Weights.COCO_V1, "
                        "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1, FCOS_ResNet50_FPN_Weights.COCO_V1 "
                        "(downloaded once; needs --backbone resnet50). The classification layer is "
                        "rebuilt for this dataset's classes. Files are loaded safely (weights_only)")
    p.add_argument("--init-keep-classes", action="store_true",
                   help="keep --init's classifier rows of the classes named as this dataset's "
                        "(e.g. COCO's person, car); the other classes start fresh")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="base learning rate (default 0.01 x batch/16)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--log-every", type=int, default=20, metavar="N")
    p.add_argument("--no-mine", action="store_true", help="do not mine at checkpoints")
    p.add_argument("--hidden", metavar="HIDDEN.json",
                   help="the erased annotations of a sparsified set: the review app then plots "
                        "mining precision and recall")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--score-thresh", type=float, metavar="TAU",
                   help="co-generation score threshold (RetinaNet 0.6, FCOS 0.5)")
    p.add_argument("--nms-iou", type=float, metavar="T1", help="class-wise NMS IoU (RetinaNet 0.5, FCOS 0.6)")
    p.add_argument("--gt-iou", type=float, metavar="T2",
                   help="drop a pseudo box overlapping a same-class annotation above this IoU (0.4)")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast (auto: on CUDA; bf16 runs on the CPU too); decoding, losses "
                        "and NMS stay fp32")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels_last memory layout (auto: on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_review_mining_args(p)
    p.set_defaults(func=run)


def config_from_args(args):
    from comining.config import MiningThresholds, TrainConfig

    thresholds = MiningThresholds.for_detector(args.detector, score_thresh=args.score_thresh,
                                               nms_iou=args.nms_iou, gt_iou=args.gt_iou)
    return TrainConfig(
        images=args.images, ann=args.ann, run=args.run, detector=args.detector,
        backbone=args.backbone, fpn_channels=args.fpn_channels, method=args.method,
        augment=args.augment, iters=args.iters, batch_size=args.batch_size,
        image_size=args.image_size, checkpoint_every=args.checkpoint_every,
        weights_backbone=args.weights_backbone, init=args.init,
        init_keep_classes=args.init_keep_classes, device=args.device, seed=args.seed,
        lr=args.lr, num_workers=args.workers, log_every=args.log_every, mine=not args.no_mine,
        hidden=args.hidden, thresholds=thresholds, amp=args.amp,
        channels_last=args.channels_last, review=review_mining_from_args(args))


def run(args) -> int:
    from comining.engine import train

    config = config_from_args(args)
    run_dir = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"run finished: {run_dir} (review with: comining review --run {run_dir})")
    return 0
