package ring

import (
	"slices"
	"sync"
	"testing"
)

func TestRingKeepsTheLastValuesInOrder(t *testing.T) {
	r := New[int](3)
	if got := r.All(); len(got) != 0 {
		t.Fatalf("empty ring: %v", got)
	}
	for i, want := range [][]int{{1}, {1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {4, 5, 6}, {5, 6, 7}} {
		r.Add(i + 1)
		if got := r.All(); !slices.Equal(got, want) {
			t.Fatalf("after adding %d: %v, want %v", i+1, got, want)
		}
	}
}

// Concurrent writers never make the ring grow past its size (run -race).
func TestRingBoundedUnderConcurrentAdds(t *testing.T) {
	r := New[int](8)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				r.Add(g*1000 + i)
				_ = r.All()
			}
		})
	}
	wg.Wait()
	if got := r.All(); len(got) != 8 {
		t.Fatalf("kept %d values, want 8", len(got))
	}
}
