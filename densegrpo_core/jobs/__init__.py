"""Background jobs: training runs queued per device, stoppable, recorded on disk, resumable.

- `state`          one job as data: states, the job.json record, the settings key of duplicates
- `manager`        JobManager: queues, worker threads, stop/resume, records, event forwarding
- `training_work`  the work of one training job: the Trainer plus LoRA files in a LoRA folder

May import: training and everything below it. Never app. The ComfyUI pack's job service wraps `manager`.
"""
