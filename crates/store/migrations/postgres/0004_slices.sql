-- GPU slices: part of one GPU's compute (thousandths) and memory, time-sliced or a MIG profile.
-- A whole instance keeps gpu_milli = 1000 and gpu_mem_mib = 0.
ALTER TABLE instances ADD COLUMN gpu_milli BIGINT NOT NULL DEFAULT 1000;
ALTER TABLE instances ADD COLUMN gpu_mem_mib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN mig_profile TEXT;
-- Why an instance ended the way it did, when the agent says ("exceeded its GPU memory cap...").
ALTER TABLE instances ADD COLUMN status_reason TEXT;

-- The slice an instance holds. Invariants (kept by the guarded insert in apply_plan under the
-- node generation check): a GPU held whole (gpus.instance_id) has no slices; the slices of one GPU
-- add up to at most 1000 milli and its memory; MIG and time-sliced slices never share a GPU.
CREATE TABLE gpu_slices (
    instance_id  TEXT PRIMARY KEY REFERENCES instances(id),
    node_id      TEXT NOT NULL,
    idx          BIGINT NOT NULL,
    milli        BIGINT NOT NULL CHECK (milli > 0 AND milli <= 1000),
    mem_mib      BIGINT NOT NULL CHECK (mem_mib >= 0),
    mig          BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (node_id, idx) REFERENCES gpus(node_id, idx)
);
CREATE INDEX gpu_slices_by_gpu ON gpu_slices (node_id, idx);
