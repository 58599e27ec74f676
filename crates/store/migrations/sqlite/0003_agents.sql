-- Real node agents: a node is driven by an in-process fake agent ('fake') or by a gpucloud agent
-- process ('agent') that registers over HTTP. Each registration bumps the epoch; reports carrying
-- an older epoch are refused (fencing a returning agent).
ALTER TABLE nodes ADD COLUMN driver TEXT NOT NULL DEFAULT 'fake';
ALTER TABLE nodes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;

-- Workload output shipped by agents, in order.
CREATE TABLE instance_logs (
    instance_id  TEXT NOT NULL REFERENCES instances(id),
    seq          INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- A GPU that reported a fatal XID or uncorrectable ECC errors takes no new work.
ALTER TABLE gpus ADD COLUMN healthy INTEGER NOT NULL DEFAULT 1;
