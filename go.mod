module github.com/usagebreaker/usagebreaker

go 1.26.8
