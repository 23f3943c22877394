package strict

// Suggest returns the candidate closest to s when it is close enough to be a
// likely typo (at most 2 edits, and fewer than half of s), else "". Ties go to
// the earlier candidate.
func Suggest(s string, candidates []string) string {
	if len(s) == 0 || len(s) > 100 {
		return ""
	}
	limit := min(2, (len(s)-1)/2)
	best, bestD := "", limit+1
	for _, c := range candidates {
		if c == s || abs(len(c)-len(s)) >= bestD {
			continue
		}
		if d := distance(s, c, bestD); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// distance is the Levenshtein distance of a and b (bytes), or >= limit when it
// is at least limit.
func distance(a, b string, limit int) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
