module switchyard/loadgen

go 1.22
