"""What a training run needs beside the method: callbacks, learning-rate schedules (`optim`), the seeds of
every random stream (`seeding`), checkpoint writes, preemption, the run lock and the checks before a run.

Nothing is imported here: `datamodules` reads `seeding` without Lightning."""
