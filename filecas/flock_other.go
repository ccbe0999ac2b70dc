//go:build !unix

package filecas

import (
	"errors"
	"os"
)

var errWouldBlock = errors.New("would block")

func flock(*os.File, bool) error {
	return errors.New("conditional writes on the file system need flock(2) (unix)")
}
