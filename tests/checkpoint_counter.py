"""A stand-in for a resumable training job, used by the executor tests.

    python checkpoint_counter.py OUT CHECKPOINT TOTAL_STEPS [SECONDS_PER_STEP]

Counts to TOTAL_STEPS, one step per SECONDS_PER_STEP (default 1). On SIGUSR1 or SIGTERM it
saves the step reached to CHECKPOINT and exits with code 3 ("checkpointed, requeue me"),
like `diffobj train`; run again, it resumes from the checkpoint and prints so. When done it
writes the final step count to OUT.
"""

import json
import os
import signal
import sys
import time

EXIT_CHECKPOINTED = 3


def main() -> None:
    out, checkpoint, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds_per_step = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    received: list[int] = []
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, lambda s, frame: received.append(s))

    step = 0
    if os.path.exists(checkpoint):
        with open(checkpoint) as f:
            step = json.load(f)["step"]
        print(f"resuming from step {step}", flush=True)
    else:
        print("starting from step 0", flush=True)

    while step < total:
        if received:
            os.makedirs(os.path.dirname(checkpoint) or ".", exist_ok=True)
            with open(checkpoint + ".tmp", "w") as f:
                json.dump({"step": step}, f)
            os.replace(checkpoint + ".tmp", checkpoint)
            print(f"{signal.Signals(received[0]).name}: checkpointed at step {step}", flush=True)
            sys.exit(EXIT_CHECKPOINTED)
        time.sleep(seconds_per_step)
        step += 1

    with open(out, "w") as f:
        f.write(f"{step}\n")
    print(f"done at step {step}", flush=True)


if __name__ == "__main__":
    main()
