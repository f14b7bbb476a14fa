// TEMPORARY STUB (replaced by the classifier work)
