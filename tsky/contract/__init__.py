"""What crosses a Temporal boundary: workflow, activity, signal and update inputs and results, job
state, ids, task queues, search attributes, workflow and activity names. Pure: safe in workflows."""
