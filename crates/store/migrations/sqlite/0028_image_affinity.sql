-- The public container images a node holds (newline separated), as its agent last reported:
-- among equally good nodes the scheduler takes one that holds the image asked for. And why an
-- instance went where it did, when that was more than the policy's choice.
ALTER TABLE nodes ADD COLUMN images TEXT;
ALTER TABLE instances ADD COLUMN placement_note TEXT;
