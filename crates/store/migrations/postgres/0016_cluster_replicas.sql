-- Active-active replica sets: a cluster with one member pinned to each listed region (comma
-- separated), each placed on its own (not a gang). NULL for an ordinary cluster.
ALTER TABLE clusters ADD COLUMN replicas_in TEXT;
